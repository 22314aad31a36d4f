"""The CPU's figures (``python -m ranlib.bench --device cpu``) and the bf16-vs-fp32 training check
(``python -m ranlib.bench --precision-check``): what makes the CPU the study's machine, measured.

:func:`cpu_figures` measures, in one process: the training step's images/s
(:func:`ranlib.training.cpu_batch.step_seconds`, the loop's own step on synthetic batches) per
precision (fp32, bf16 autocast) and memory format (NCHW, channels_last) at one batch, and at the
candidate batches of the CPU profiles for the default precision and format (the choice
``ranlib.training.config.resolve`` makes); the bf16 and fp32 matrix-product peaks
(:func:`ranlib.training.runtime.matmul_peak`) and each step's share of its precision's peak (a step costs
about 6 x the multiply-adds of a forward pass), by the wall clock and per second of the process's
CPU time; and, with a data set, the real loop
(``ranlib.training.loop.run``: augmentation, the loss windows, logging, one evaluation) against the bare
step at the same settings, measured before and after it: the loop's images/s from the second
log window on (training time, as the run's metrics report it) over the bare step's.

:func:`precision_check` trains the same model three times on the same data for a few hundred
iterations, fp32 seeds 0 and 1 and bf16 seed 0, and compares the training-loss curves (the mean
loss of every ``log_every`` iterations): bf16 trains like fp32 here when its curve stays as close
to fp32's of the same seed as the two fp32 seeds stay to each other.

The load average at the start and end is recorded with every figure: on a shared machine the
rates are only as good as the cores were free.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from ranlib.training import provenance
from ranlib.training.cpu_batch import step_seconds
from ranlib.training.runtime import matmul_peak, native_bf16

FORMATS = (False, True)  # channels_last off, on
PRECISIONS = ("fp32", "bf16")
TRAIN_FLOPS_PER_MAC = 6  # forward, and backward for activations and weights: 3 passes of 2 FLOPs a MAC
LOOP_LOG_EVERY = 10  # iterations per logged window (fewer in runs shorter than 4 windows)


def _conditions() -> dict:
    return {"threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "native_bf16": native_bf16()}


def step_rows(model: str, macs: int, peaks: dict, *, batches: dict, steps: int, warmup: int) -> list[dict]:
    """One row per (precision, channels_last, batch) of ``batches`` (``{(precision, channels_last): [batch, ...]}``):
    images/s by the wall clock (the median step) and per second of CPU time, and each one's share of
    the precision's matrix peak measured the same way."""
    rows = []
    for (precision, channels_last), sizes in batches.items():
        for batch in sizes:
            rates = _bare_rates(model, batch, precision=precision, channels_last=channels_last, steps=steps,
                                warmup=warmup)
            tflops, cpu_tflops = (TRAIN_FLOPS_PER_MAC * macs * rates[clock] / 1e12 for clock in ("wall", "cpu"))
            rows.append({"precision": precision, "channels_last": channels_last, "batch_size": batch,
                         "images_per_s": rates["wall"], "achieved_tflops": tflops,
                         "peak_share": tflops / peaks[precision]["tflops"], "images_per_cpu_s": rates["cpu"],
                         "peak_share_cpu_time": cpu_tflops / peaks[precision]["cpu_tflops"]})
    return rows


def log_every(iterations: int) -> int:
    return max(1, min(LOOP_LOG_EVERY, iterations // 4))


def _train_config(model: str, dataset: str, data_root: str, folder: Path, *, iterations: int, **fields):
    """A quick-profile run of ``iterations`` on the CPU, evaluated once at the end, no checkpoint
    on the way, its files in ``folder``."""
    from ranlib.training.config import TrainConfig
    return TrainConfig(model=model, dataset=dataset, data_root=data_root, profile="quick", device="cpu",
                       iterations=iterations, log_every=log_every(iterations), eval_every=iterations,
                       checkpoint_every=iterations + 1, results_dir=str(folder / "results"),
                       checkpoint_dir=str(folder / "checkpoints"), progress=False, experiment="bench", **fields)


def _train(config) -> tuple[dict, list[dict]]:
    """``ranlib.training.loop.run(config)``'s record and its ``train`` metric lines."""
    from ranlib.training.loop import run
    record = run(config)
    metrics = Path(config.checkpoint_dir) / config.experiment / config.run_name / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    return record, [line for line in lines if line["event"] == "train"]


def window_rates(lines: list[dict], batch_size: int) -> list[float]:
    """Images/s of each log window, from the cumulative rates of successive ``train`` lines
    (``images_per_s`` = images so far / training time so far)."""
    points = [(0, 0.0)] + [(line["iteration"] * batch_size, line["iteration"] * batch_size / line["images_per_s"])
                           for line in lines]
    return [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(points, points[1:])]


def cpu_time_rates(lines: list[dict], batch_size: int) -> list[float]:
    """Images per second of the process's CPU time in each log window after the first
    (``process_cpu_s`` of successive ``train`` lines)."""
    return [(b["iteration"] - a["iteration"]) * batch_size / (b["process_cpu_s"] - a["process_cpu_s"])
            for a, b in zip(lines, lines[1:])]


def _bare_rates(model: str, batch_size: int, **settings) -> dict:
    times = step_seconds(model, batch_size=batch_size, **settings)
    return {clock: batch_size / statistics.median(seconds) for clock, seconds in times.items()}


def loop_share(model: str, *, dataset: str, data_root: str, batch_size: int, precision: str, channels_last: bool,
               iterations: int, max_test_samples: int, steps: int, warmup: int) -> dict:
    """The real loop's images/s against the bare step's (measured before and after it), by the wall
    clock and by the process's CPU time (which a busy machine's other work does not count)."""
    settings = dict(precision=precision, channels_last=channels_last, steps=steps, warmup=warmup)
    bare = [_bare_rates(model, batch_size, **settings)]
    with tempfile.TemporaryDirectory(prefix="ranlib-bench-loop-") as folder:
        config = _train_config(model, dataset, data_root, Path(folder), iterations=iterations, run_name="loop",
                               batch_size=batch_size, precision=precision, channels_last=channels_last,
                               max_test_samples=max_test_samples)
        record, lines = _train(config)
    bare.append(_bare_rates(model, batch_size, **settings))
    windows = window_rates(lines, batch_size)[1:]  # the first window holds the loop's warm-up
    cpu_windows = cpu_time_rates(lines, batch_size)
    loop = statistics.fmean(windows) if windows else record["cost"]["images_per_s"]
    loop_cpu = statistics.fmean(cpu_windows) if cpu_windows else None
    bare_wall, bare_cpu = (statistics.fmean(b[clock] for b in bare) for clock in ("wall", "cpu"))
    return {"batch_size": batch_size, "precision": precision, "channels_last": channels_last,
            "iterations": iterations, "log_every": config.log_every, "dataset": record["dataset"],
            "loop_images_per_s": loop, "loop_window_images_per_s": windows,
            "bare_step_images_per_s": [b["wall"] for b in bare], "share": loop / bare_wall,
            "loop_images_per_cpu_s": loop_cpu, "bare_step_images_per_cpu_s": [b["cpu"] for b in bare],
            "share_cpu_time": loop_cpu / bare_cpu if loop_cpu else None}


def cpu_figures(model: str, *, batch_size: int | None, steps: int, warmup: int, peak_size: int | None,
                dataset: str | None, data_root: str | None, iterations: int, max_test_samples: int,
                seed: int = 0) -> dict:
    """The CPU's figures as one record (see the module docstring)."""
    import ranlib
    from ranlib.training.cpu_batch import fastest_batch
    from ranlib.training.recipes import CPU_BATCHES
    from ranlib.training.runtime import resolve_precision

    started, before = provenance.utc_now(), _conditions()
    device = torch.device("cpu")
    counts = ranlib.complexity(ranlib.create_model(model, num_classes=ranlib.model_info(model).num_classes),
                               ranlib.model_info(model).input_size)
    peaks = {"bf16": matmul_peak(device, torch.bfloat16, peak_size), "fp32": matmul_peak(device, torch.float32, peak_size)}
    default = (resolve_precision("auto", device), True)
    batches = {(p, f): [batch_size or max(CPU_BATCHES)] for p in PRECISIONS for f in FORMATS}
    if batch_size is None:
        batches[default] = list(CPU_BATCHES)
    rows = step_rows(model, counts["macs"], peaks, batches=batches, steps=steps, warmup=warmup)
    candidates = {r["batch_size"]: r["images_per_s"] for r in rows if (r["precision"], r["channels_last"]) == default}
    fastest = max(candidates, key=candidates.get)
    record = {"benchmark": "cpu", "model": model, "input_size": ranlib.model_info(model).input_size,
              "params": int(counts["params"]), "macs": int(counts["macs"]), "device_name": provenance.cpu_name(),
              "steps": steps, "warmup": warmup, "matmul_peak": peaks, "step": rows,
              "default": {"precision": default[0], "channels_last": default[1], "batch_size": fastest,
                          "cached_choice": fastest_batch(model, precision=default[0], channels_last=default[1],
                                                         candidates=list(CPU_BATCHES))["batch_size"]
                          if batch_size is None else None},
              "loop": None}
    if dataset is not None:
        record["loop"] = loop_share(model, dataset=dataset, data_root=data_root, batch_size=fastest,
                                    precision=default[0], channels_last=default[1], iterations=iterations,
                                    max_test_samples=max_test_samples, steps=steps, warmup=warmup)
    record["conditions"] = {"start": before, "end": _conditions()}
    record["provenance"] = provenance.collect(device, precision=default[0], seed=seed, started_at=started)
    return record


def cpu_report(record: dict) -> str:
    lines = [f"ranlib bench on the CPU: {record['model']}, {record['device_name']}, "
             f"{record['conditions']['start']['threads']} threads, load average "
             f"{record['conditions']['start']['load_average'][0]:.1f} at the start, "
             f"{record['conditions']['end']['load_average'][0]:.1f} at the end; native bf16: "
             f"{'yes' if record['conditions']['start']['native_bf16'] else 'no'}"]
    lines += [f"matrix-product peak {p['dtype']}: {1e3 * p['tflops']:.0f} GFLOP/s ({p['size']}^3), "
              f"{1e3 * p['cpu_tflops']:.0f} per CPU-second" for p in record["matmul_peak"].values()]
    lines.append(f"{'precision':<10} {'format':<14} {'batch':>5} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8}"
                 f" {'per CPU-s':>10} {'of peak':>8}")
    lines += [f"{r['precision']:<10} {'channels_last' if r['channels_last'] else 'NCHW':<14} {r['batch_size']:>5} "
              f"{r['images_per_s']:>9.1f} {1e3 * r['achieved_tflops']:>8.0f} {100 * r['peak_share']:>7.1f} %"
              f" {r['images_per_cpu_s']:>10.1f} {100 * r['peak_share_cpu_time']:>7.1f} %"
              for r in record["step"]]
    d = record["default"]
    lines.append(f"default on this CPU: {d['precision']}, {'channels_last' if d['channels_last'] else 'NCHW'}, "
                 f"fastest batch now {d['batch_size']}" + (f" (the cached choice training uses: {d['cached_choice']})"
                                                           if d["cached_choice"] is not None else ""))
    loop = record["loop"]
    if loop is None:
        lines.append("loop: not measured (pass --dataset and --data-root)")
    else:
        lines.append(f"loop ({loop['dataset']['label']}, batch {loop['batch_size']}, {loop['iterations']} it): "
                     f"{loop['loop_images_per_s']:.1f} images/s against the bare step's "
                     f"{' and '.join(f'{r:.1f}' for r in loop['bare_step_images_per_s'])} (before, after): "
                     f"{100 * loop['share']:.0f} %" + (f"; by CPU time {loop['loop_images_per_cpu_s']:.1f} against "
                     f"{' and '.join(f'{r:.1f}' for r in loop['bare_step_images_per_cpu_s'])}: "
                     f"{100 * loop['share_cpu_time']:.0f} %" if loop["share_cpu_time"] else ""))
    return "\n".join(lines)


def precision_check(model: str, *, dataset: str, data_root: str, batch_size: int, iterations: int,
                    max_test_samples: int, channels_last: bool = True) -> dict:
    """fp32 seeds 0 and 1 and bf16 seed 0, trained alike; their loss curves compared (module docstring)."""
    started, before = provenance.utc_now(), _conditions()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ranlib-precision-check-") as folder:
        for precision, seed in (("fp32", 0), ("fp32", 1), ("bf16", 0)):
            config = _train_config(model, dataset, data_root, Path(folder), iterations=iterations,
                                   run_name=f"{precision}-s{seed}", seed=seed, batch_size=batch_size,
                                   precision=precision, channels_last=channels_last, max_test_samples=max_test_samples)
            record, lines = _train(config)
            runs.append({"precision": precision, "seed": seed, "iterations": [line["iteration"] for line in lines],
                         "train_loss": [line["train_loss"] for line in lines],
                         "test_top1_error": record["final"]["top1_error"], "num_test": record["final"]["num_test"],
                         "images_per_s": record["cost"]["images_per_s"], "dataset": record["dataset"]})
    fp32_0, fp32_1, bf16_0 = (r["train_loss"] for r in runs)
    gap = statistics.fmean(abs(a - b) for a, b in zip(bf16_0, fp32_0))
    spread = statistics.fmean(abs(a - b) for a, b in zip(fp32_1, fp32_0))
    last = {"bf16_vs_fp32_same_seed": abs(bf16_0[-1] - fp32_0[-1]), "fp32_seeds": abs(fp32_1[-1] - fp32_0[-1])}
    return {"benchmark": "precision_check", "model": model, "batch_size": batch_size, "iterations": iterations,
            "log_every": log_every(iterations), "channels_last": channels_last, "runs": runs,
            "mean_abs_gap": {"bf16_vs_fp32_same_seed": gap, "fp32_seeds": spread}, "last_window_gap": last,
            "agree": gap <= spread, "device_name": provenance.cpu_name(),
            "conditions": {"start": before, "end": _conditions()},
            "provenance": provenance.collect(torch.device("cpu"), precision="bf16 and fp32", seed=0, started_at=started)}


def precision_report(record: dict) -> str:
    gap, last = record["mean_abs_gap"], record["last_window_gap"]
    lines = [f"bf16 vs fp32 on the CPU: {record['model']}, batch {record['batch_size']}, {record['iterations']} "
             f"iterations on {record['runs'][0]['dataset']['label']}, training loss every {record['log_every']} it"]
    lines += [f"  {r['precision']} seed {r['seed']}: last window loss {r['train_loss'][-1]:.3f}, test error "
              f"{r['test_top1_error']:.1f} % on {r['num_test']}, {r['images_per_s']:.1f} images/s" for r in record["runs"]]
    lines.append(f"mean |loss gap| over the curve: bf16 vs fp32 seed 0 {gap['bf16_vs_fp32_same_seed']:.4f}, fp32 seed 1 "
                 f"vs seed 0 {gap['fp32_seeds']:.4f} (last window {last['bf16_vs_fp32_same_seed']:.4f} vs "
                 f"{last['fp32_seeds']:.4f}): bf16 {'trains' if record['agree'] else 'does not train'} like fp32 "
                 "within the spread of two fp32 seeds")
    return "\n".join(lines)


def file_name(record: dict) -> str:
    if record["benchmark"] == "precision_check":
        return f"precision-check-{record['model']}-b{record['batch_size']}.json"
    return f"cpu-{record['model']}.json"

