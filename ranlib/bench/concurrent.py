"""Several trainings at once on one device (``python -m ranlib.bench --processes K``): K copies of
ranlib's measurement (:func:`ranlib.bench.step.measure`), each in its own process on the same device,
their timed steps started together (a barrier), and the images/s of all K together, which the
command reports against one process's rate: whether packing small trainings onto one GPU raises
total throughput. Without CUDA MPS (``nvidia-cuda-mps-control -d``) the processes' kernels
time-slice rather than overlap.
"""

from __future__ import annotations

import queue
import threading
import time

import torch

from ranlib.errors import RanlibError

from .step import measure


def _concurrent_worker(model_name: str, kwargs: dict, barrier, results) -> None:
    """One of ``--processes``: measure() with its timed steps started together with the others'."""
    window = []

    def start_together():
        if kwargs["device"].type == "cuda":
            torch.cuda.synchronize(kwargs["device"])  # the warm-up is done before the barrier
        barrier.wait()
        window.append(time.time())  # wall clock: comparable between processes

    try:
        figures = measure(model_name, before_timing=start_together, **kwargs)
        results.put({"figures": figures, "start": window[0], "end": time.time()})
    except threading.BrokenBarrierError:  # another process failed and said why
        results.put({"error": None})
    except Exception as exc:  # whatever it is, the parent reports it as one line
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def measure_concurrent(model_name: str, processes: int, kwargs: dict) -> dict:
    """``processes`` copies of ``measure(model_name, **kwargs)`` at once; per-process and total images/s."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_concurrent_worker, args=(model_name, kwargs, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        answers = []
        while len(answers) < processes:
            try:
                answers.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead:  # killed (out of memory?) before it could answer; release the others
                    barrier.abort()
                    raise RanlibError(f"a --processes worker died with exit code {dead[0]}") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return _combine(answers, kwargs["batch_size"])


def _combine(answers: list[dict], batch_size: int) -> dict:
    """The workers' answers as one figure, or the first failure's reason as a RanlibError.

    The total rate is every process's timed images over the wall-clock span from the first start
    to the last end, so a process finishing early counts against it.
    """
    failed = [a["error"] for a in answers if "error" in a]
    if failed:
        raise RanlibError(f"a --processes worker failed: {next(filter(None, failed), 'no reason given')}")
    images = sum(a["figures"]["steps"] for a in answers) * batch_size
    span = max(a["end"] for a in answers) - min(a["start"] for a in answers)
    return {"processes": len(answers), "images_per_s": [a["figures"]["images_per_s"] for a in answers],
            "peak_memory_bytes": [a["figures"]["peak_memory_bytes"] for a in answers],
            "aggregate_images_per_s": images / span}
