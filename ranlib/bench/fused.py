"""The fused-population benchmark: horizontal fusion measured in one process::

    python -m ranlib.bench --fused --budget-seconds 60 --out results/performance

For each of ``--fused-models`` (cifar_attention92, cifar_resnet164), ``--fused-batches`` (64 and
the quick profile's 256, per member), ``--members`` K (1 2 4 8 16) and ``--graphs`` (both, on,
off), it builds K members (``ranlib.create_model``, seeds 0..K-1), fuses them
(``ranlib.models.fused.fuse``) and times real training steps of ``ranlib.training.step.TrainStep`` as
``ranlib.training.loop.run_group`` runs them (Nesterov SGD with ``fused=graphs``, bf16 autocast and
channels_last on CUDA, the whole step one CUDA graph with graphs on), fed K random uint8
batches made and normalised on the device and fused by ``fuse_inputs``: CUDA-event times of up
to ``--steps`` steps (fewer when they would take longer than ``--seconds-per-config``) after
``--warmup`` (default 5; graphs capture after ``GRAPH_WARMUP_STEPS`` eager steps). Also, in the
same process: the GPU's bf16 matrix peak (``--peak-size`` 8192, n x n products), the plain
eager-fp32 DataLoader baseline per model and batch (:func:`ranlib.bench.step.measure`), and per-layer
alternatives to the grouped convolutions (:mod:`ranlib.bench.layers`: every distinct convolution of
the fused model at its real shape, forward and backward, grouped vs a 1x1 as one ``bmm`` over the
members or a 3x3 as one dense convolution with a block-diagonal weight; which is faster, recorded,
not switched on). Per configuration: aggregate and per-member images/s, step time, achieved
TFLOP/s (6 x multiply-adds per image x images/s), its share of the measured peak, and the ratios
to K separate solo trainings (K x the K = 1 step time), to the best solo configuration (K = 1,
graphs on or off) and to the baseline; then the targets (``TARGET_*``), met or not. Measurements
run in order of importance (:func:`fused_plan`: the targets' K = 8 Attention-92 at batch 64 with
graphs first, its solo runs, the baseline, ...); with ``--budget-seconds S`` none starts after S
seconds from the process's start, nor one predicted to overrun them, and those are listed under
``"skipped"``; a configuration that fails (out of memory, a capture failure) is listed under
``"failed"`` and the rest go on. The record goes to ``--out DIR/fused.json`` (or ``--json PATH``)
with provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ranlib.errors import RanlibError, ResultsExistError, print_error
from ranlib.files import atomic_write
from ranlib.training import provenance
from ranlib.training.runtime import matmul_peak

from . import layers as layer_bench
from . import step as step_bench
from .step import CIFAR_MEAN, CIFAR_STD, Timer, bf16_peak_tflops

FUSED_MODELS = ("cifar_attention92", "cifar_resnet164")
FUSED_MEMBERS = (1, 2, 4, 8, 16)
FUSED_KEY_MEMBERS = 8  # the K the targets speak of
FUSED_FILE = "fused.json"  # in --out DIR
# The targets for fused K = 8 cifar_attention92 with CUDA graphs, judged by fused_summary.
TARGET_FUSED_VS_BASELINE = 10.0
TARGET_FUSED_VS_BEST_SOLO = 4.0
TARGET_PEAK_SHARE = {64: 0.15, "quick": 0.30}  # share of the measured bf16 matrix peak, by batch


def quick_batch_size() -> int:
    from ranlib.training.recipes import PROFILES
    return PROFILES["cifar"]["quick"].batch_size


def _fused_batches(model_name: str, members: int, batch_size: int, device: torch.device, memory_format, seed: int):
    """A step's fused input and labels, made on the device: two pools of K random uint8 batches,
    normalised and fused (:func:`ranlib.models.fused.fuse_inputs`) at every call, as the
    training loop fuses its K streams."""
    import ranlib
    from ranlib.models.fused import fuse_inputs

    classes = ranlib.model_info(model_name).num_classes
    generator = torch.Generator(device=device).manual_seed(seed)
    pools = [[torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device, generator=generator)
              for _ in range(members)] for _ in range(2)]
    labels = [torch.randint(0, classes, (batch_size, members), device=device, generator=generator) for _ in range(2)]
    mean = 255 * torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    calls = [0]

    def batch():
        i = calls[0] % 2
        calls[0] += 1
        xs = [((u.float() - mean) / std).contiguous(memory_format=memory_format) for u in pools[i]]
        return fuse_inputs(xs).contiguous(memory_format=memory_format), labels[i]

    return batch


_MACS: dict[str, int] = {}  # multiply-adds per image, by model name


def measure_fused(model_name: str, *, members: int, batch_size: int, graphs: bool, device: torch.device,
                  precision: str, channels_last: bool, steps: int, warmup: int, seed: int,
                  max_seconds: float | None = None) -> dict:
    """Time real training steps of ``members`` fused members (seeds ``seed .. seed + K - 1``), as
    ``ranlib.training.loop.run_group`` trains them: :class:`ranlib.training.step.TrainStep`, Nesterov SGD
    (``fused=graphs``), ``precision`` autocast, the whole step one CUDA graph when ``graphs``.

    ``warmup`` untimed steps first (at least ``GRAPH_WARMUP_STEPS`` + 2 with graphs: eager steps,
    the capture, one replay); then ``steps`` timed ones, or fewer if the last warm-up step says
    they would take longer than ``max_seconds`` (at least 3).
    """
    import warnings

    import ranlib
    from ranlib.models.fused import choose_conv_impls, fuse
    from ranlib.training.evaluation import build_model
    from ranlib.training.runtime import autocast, cuda_time_s, peak_memory_bytes
    from ranlib.training.step import GRAPH_WARMUP_STEPS, TrainStep

    started = time.perf_counter()
    info = ranlib.model_info(model_name)
    if info.input_size != 32:
        raise RanlibError(f"the fused benchmark is for the 32x32 CIFAR models; {model_name} takes "
                          f"{info.input_size}x{info.input_size}")
    if graphs and device.type != "cuda":
        raise RanlibError("CUDA graphs need a CUDA device")
    solo = [build_model(model_name, {}, info.num_classes, seed + i) for i in range(members)]
    if model_name not in _MACS:  # FlopCounterMode takes seconds of host time: once per model
        _MACS[model_name] = ranlib.complexity(solo[0], 32)["macs"]
    macs = _MACS[model_name]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    model = fuse(solo).to(device, memory_format=memory_format).train()
    del solo
    batch = _fused_batches(model_name, members, batch_size, device, memory_format, seed)
    conv_impls = None
    if device.type == "cuda" and members > 1:  # as run_group does: each convolution's fastest kernel
        with autocast(device, precision):
            conv_impls = choose_conv_impls(model, batch()[0], cuda_time_s)["layers"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                fused=graphs or None)  # as ranlib.training.loop._train_group builds it
    build_seconds = time.perf_counter() - started
    windows = [torch.zeros(members, 3, dtype=torch.float64, device=device) for _ in range(2)]
    step = TrainStep(model, model, optimizer, windows=windows, precision=precision, cuda_graphs=graphs)
    warmup = max(warmup, GRAPH_WARMUP_STEPS + 2 if graphs else 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(warmup):
            if i == warmup - 1:  # the last warm-up step alone, to size the timed run
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                last_start = time.perf_counter()
            step(*batch())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        last_step_s = time.perf_counter() - last_start
        if max_seconds is not None:
            steps = min(steps, max(3, int(max_seconds / max(last_step_s, 1e-6))))
        timer = Timer(device)
        timer.mark()
        for _ in range(steps):
            step(*batch())
            timer.mark()
        seconds = timer.step_seconds()
    mean = statistics.fmean(seconds)
    aggregate = members * batch_size / mean
    return {
        "model": model_name, "members": members, "batch_size": batch_size, "graphs": graphs,
        "graph_captured": step.graph is not None, "conv_impls": conv_impls, "precision": precision,
        "channels_last": channels_last,
        "warmup": warmup, "steps": steps, "step_time_ms_mean": 1e3 * mean,
        "step_time_ms_median": 1e3 * statistics.median(seconds), "step_time_ms_min": 1e3 * min(seconds),
        "images_per_s": aggregate, "images_per_s_per_member": batch_size / mean,
        "macs_per_image": macs, "achieved_tflops": 3 * 2 * macs * aggregate / 1e12,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "warnings": sorted({str(w.message) for w in caught}),
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
        "build_seconds": build_seconds, "seconds": time.perf_counter() - started,
    }


# --- the plan, the budget, the record -------------------------------------------------------------

def fused_plan(models: list[str], batches: list[int], members: list[int], graphs: list[bool]) -> list[tuple]:
    """The measurements in order of importance: ``("fused", model, batch, K, graphs)``,
    ``("baseline", model, batch)``, ``("layers", model, batch, K)``.

    First the target's configuration (the first model at the first batch, K = 8 or the largest
    K, graphs on) with its solo runs (K = 1, graphs on and off) and the plain baseline; the same
    at the other batches; the per-layer alternatives there; then the other models' such
    configurations and baselines; then every other K; then the other per-layer measurements.
    """
    plan: list[tuple] = []

    def add(*item):
        if item not in plan:
            plan.append(item)

    key = FUSED_KEY_MEMBERS if FUSED_KEY_MEMBERS in members else max(members)
    solo = [1] if 1 in members else []

    def core(model, batch):
        add("fused", model, batch, key, graphs[0])
        for g in graphs:
            for k in solo:
                add("fused", model, batch, k, g)

    first = models[0]
    core(first, batches[0])
    add("baseline", first, batches[0])
    for batch in batches[1:]:
        core(first, batch)
    if key > 1:
        add("layers", first, batches[0], key)
    for g in graphs[1:]:
        add("fused", first, batches[0], key, g)
    for model in models[1:]:
        for batch in batches:
            core(model, batch)
    for model in models:
        for batch in batches:
            add("baseline", model, batch)
    if key > 1:
        for model in models:
            for batch in batches:
                add("layers", model, batch, key)
    for g in graphs:
        for model in models:
            for batch in batches:
                for k in members:
                    add("fused", model, batch, k, g)
    for model in models:
        for batch in batches:
            for k in members:
                if k > 1:
                    add("layers", model, batch, k)
    return plan


def plan_label(item: tuple) -> str:
    kind, model, batch = item[:3]
    if kind == "fused":
        return f"fused {model} b{batch} K={item[3]} graphs {'on' if item[4] else 'off'}"
    if kind == "layers":
        return f"layers {model} b{batch} K={item[3]}"
    return f"baseline {model} b{batch}"


def _predicted_seconds(item: tuple, done: list[dict], steps: int, max_seconds: float | None) -> float:
    """What fused ``item`` will likely cost, from the latest measured one of its model: building
    scaled by K, its step time by K x batch (an upper bound: fusion is meant to scale better),
    the warm-up and the timed steps (at most ``max_seconds``). 0 when nothing is known."""
    same = [d for d in done if d["model"] == item[1]]
    if item[0] != "fused" or not same:
        return 0.0
    last = same[-1]
    step_s = last["step_time_ms_mean"] / 1e3 * item[3] * item[2] / (last["members"] * last["batch_size"])
    timed = steps * step_s if max_seconds is None else min(steps * step_s, max(max_seconds, 3 * step_s))
    return last["build_seconds"] / last["members"] * item[3] + (last["warmup"] + 1) * step_s + timed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _release_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # a broken context: the next configurations fail and say so
            pass


def run_fused(args: argparse.Namespace, clock_start: float, save: Callable[[dict], None] | None = None) -> dict:
    """Every configuration of ``fused_plan`` the budget allows; the record written to disk.

    ``save`` is handed the record so far (``"complete": False``) after every configuration, so
    that a run stopped from outside leaves what it measured."""
    import ranlib
    from ranlib.training.runtime import Dist, resolve_precision, select_device

    for name in args.fused_models:
        try:
            if ranlib.model_info(name).input_size != 32:
                raise RanlibError(f"--fused measures the 32x32 CIFAR models; {name} is not one")
        except ranlib.UnknownModelError as exc:
            raise RanlibError(str(exc)) from None
    if args.steps < 1 or min(args.members) < 1 or min(args.fused_batches) < 1:
        raise RanlibError("need --steps >= 1, --members >= 1 and --fused-batches >= 1")
    device = select_device(args.device, Dist())
    precision = resolve_precision(args.precision, device)
    channels_last = True if args.channels_last is None else args.channels_last
    if device.type == "cuda":  # as ranlib.training.loop._configure_backends (TF32 flags left at torch's defaults, as
        torch.backends.cudnn.benchmark = True  # the plain baseline has them; the fused steps run in bf16)
    warmup = args.warmup if args.warmup is not None else 5
    graphs = {"both": [True, False], "on": [True], "off": [False]}[args.graphs]
    started = provenance.utc_now()
    name = provenance.device_name(device)
    budget = args.budget_seconds
    deadline = None if budget is None else clock_start + budget
    plan = fused_plan(list(args.fused_models), list(args.fused_batches), sorted(set(args.members)), graphs)
    record = {"benchmark": "fused", "device_name": name,
              "bf16_peak_tflops_datasheet": bf16_peak_tflops(name) if device.type == "cuda" else None,
              "models": list(args.fused_models), "batches": list(args.fused_batches), "members": sorted(set(args.members)),
              "graphs": graphs, "precision": precision, "channels_last": channels_last, "seed": args.seed,
              "budget_seconds": budget, "plan": [plan_label(item) for item in plan]}
    record["matmul_peak"] = matmul_peak(device, size=args.peak_size)
    early_provenance = provenance.collect(device, precision=precision, seed=args.seed, started_at=started)
    print(f"measuring on {name} ({len(plan)} configurations planned): bf16 matrix peak {record['matmul_peak']['tflops']:.1f} TFLOP/s "
          f"({record['matmul_peak']['size']}^3)", flush=True)
    fused, baselines, layers, failed, skipped = [], [], [], [], []
    for item in plan:
        label = plan_label(item)
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            skipped.append({"item": label, "reason": "budget spent"})
            continue
        predicted = _predicted_seconds(item, fused, args.steps, args.seconds_per_config)
        if deadline is not None and now + predicted > deadline:
            skipped.append({"item": label, "reason": f"would overrun the budget (predicted {predicted:.1f} s, "
                                                     f"{deadline - now:.1f} s left)"})
            continue
        if item[0] == "fused" and item[4] and device.type != "cuda":
            skipped.append({"item": label, "reason": "CUDA graphs need a CUDA device"})
            continue
        t0 = time.perf_counter()
        try:
            if item[0] == "fused":
                result = measure_fused(item[1], members=item[3], batch_size=item[2], graphs=item[4], device=device,
                                       precision=precision, channels_last=channels_last, steps=args.steps,
                                       warmup=warmup, seed=args.seed, max_seconds=args.seconds_per_config)
                fused.append(result)
                print(f"  {label}: {result['images_per_s']:.0f} images/s, {result['step_time_ms_mean']:.2f} ms/step, "
                      f"{result['achieved_tflops']:.1f} TFLOP/s" + ("" if result["graph_captured"] or not item[4]
                                                                   else " (capture failed: eager)"), flush=True)
            elif item[0] == "baseline":
                steps = min(args.steps, 20)
                result = step_bench.measure(item[1], batch_size=item[2], device=device, precision="fp32",
                                            channels_last=False, compile_model=False, steps=steps, warmup=2,
                                            data="dataloader", num_images=args.num_images or item[2] * (steps + 3),
                                            seed=args.seed, workers=args.baseline_workers)
                result = {"model": item[1], "batch_size": item[2], **result,
                          "seconds": time.perf_counter() - t0}
                baselines.append(result)
                print(f"  {label}: {result['images_per_s']:.0f} images/s (eager fp32, DataLoader)", flush=True)
            else:
                result = layer_bench.measure_layer_alternatives(
                    item[1], members=item[3], batch_size=item[2], device=device,
                    dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                    channels_last=channels_last, deadline=deadline)
                result["seconds"] = time.perf_counter() - t0
                layers.append(result)
                print(f"  {label}: the alternative wins {result['alternative_wins']} of {len(result['layers'])} "
                      f"shapes, saving ~{result['step_saving_ms']:.2f} ms/step", flush=True)
        except Exception as exc:  # out of memory, a failed capture, ...: recorded, and on to the next
            failed.append({"item": label, "error": _first_line(exc), "seconds": time.perf_counter() - t0})
            print(f"  {label}: failed ({failed[-1]['error']})", flush=True)
            del exc
        _release_memory(device)
        if save is not None:
            partial = {**record, "fused": fused, "baselines": baselines, "layers": layers, "failed": failed,
                       "skipped": skipped, "spent_seconds": time.perf_counter() - clock_start, "complete": False}
            fused_summary(partial)
            save({**partial, "provenance": early_provenance})
    record.update(fused=fused, baselines=baselines, layers=layers, failed=failed, skipped=skipped)
    record["spent_seconds"] = time.perf_counter() - clock_start
    record["complete"] = True
    fused_summary(record)
    record["provenance"] = provenance.collect(device, precision=precision, seed=args.seed, started_at=started)
    return record


def fused_summary(record: dict) -> None:
    """Add the ratios to every fused figure and judge the targets (in place).

    ``vs_separate``: the aggregate rate over K separate solo trainings one after the other (K x the
    K = 1 step time with the same graphs setting, so the solo rate); ``vs_best_solo``: over the
    best K = 1 rate of the model and batch (graphs on or off); ``vs_baseline``: over the plain
    eager-fp32 DataLoader baseline; ``peak_share``: achieved TFLOP/s over the measured bf16 matrix peak.
    """
    peak = record["matmul_peak"]["tflops"]
    datasheet = record.get("bf16_peak_tflops_datasheet")
    solo = {(f["model"], f["batch_size"], f["graphs"]): f["images_per_s"] for f in record["fused"] if f["members"] == 1}
    baseline = {(b["model"], b["batch_size"]): b["images_per_s"] for b in record["baselines"]}
    for f in record["fused"]:
        where = (f["model"], f["batch_size"])
        same = solo.get((*where, f["graphs"]))
        best = max((rate for (m, b, _), rate in solo.items() if (m, b) == where), default=None)
        f["vs_separate"] = f["images_per_s"] / same if same else None
        f["vs_best_solo"] = f["images_per_s"] / best if best else None
        f["vs_baseline"] = f["images_per_s"] / baseline[where] if where in baseline else None
        f["peak_share"] = f["achieved_tflops"] / peak
        f["mfu_datasheet"] = f["achieved_tflops"] / datasheet if datasheet else None

    def find(batch):
        return next((f for f in record["fused"] if (f["model"], f["batch_size"], f["members"], f["graphs"])
                     == ("cifar_attention92", batch, FUSED_KEY_MEMBERS, True)), None)

    quick = quick_batch_size()
    at64, at_quick = find(64), find(quick)
    subject = f"fused K={FUSED_KEY_MEMBERS} cifar_attention92, graphs"

    def target(name, figure, key, threshold):
        value = figure.get(key) if figure else None
        return {"target": name, "threshold": threshold, "measured": value,
                "met": None if value is None else value >= threshold}

    record["targets"] = [
        target(f"{subject}, batch 64: aggregate images/s >= {TARGET_FUSED_VS_BASELINE:g}x the plain baseline",
               at64, "vs_baseline", TARGET_FUSED_VS_BASELINE),
        target(f"{subject}, batch 64: aggregate images/s >= {TARGET_FUSED_VS_BEST_SOLO:g}x the best solo",
               at64, "vs_best_solo", TARGET_FUSED_VS_BEST_SOLO),
        target(f"{subject}, batch 64: >= {100 * TARGET_PEAK_SHARE[64]:g} % of the measured bf16 matrix peak",
               at64, "peak_share", TARGET_PEAK_SHARE[64]),
        target(f"{subject}, batch {quick}: >= {100 * TARGET_PEAK_SHARE['quick']:g} % of the measured bf16 matrix "
               "peak", at_quick, "peak_share", TARGET_PEAK_SHARE["quick"]),
    ]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def fused_report(record: dict) -> str:
    peak = record["matmul_peak"]
    lines = [f"ranlib bench --fused on {record['device_name']}: measured bf16 matrix peak {peak['tflops']:.1f} TFLOP/s"
             + (f" (datasheet {record['bf16_peak_tflops_datasheet']:g})" if record["bf16_peak_tflops_datasheet"] else ""),
             f"{'model':<18} {'batch':>5} {'K':>3} {'graphs':>6} {'img/s all':>10} {'img/s each':>10} {'step ms':>8} "
             f"{'TFLOP/s':>8} {'% peak':>7} {'x separate':>10} {'x best solo':>11} {'x baseline':>10}"]
    for f in record["fused"]:
        graphs = ("on" if f["graph_captured"] else "FAIL") if f["graphs"] else "off"
        lines.append(f"{f['model']:<18} {f['batch_size']:>5} {f['members']:>3} {graphs:>6} {f['images_per_s']:>10.1f} "
                     f"{f['images_per_s_per_member']:>10.1f} {f['step_time_ms_mean']:>8.2f} {f['achieved_tflops']:>8.2f} "
                     f"{100 * f['peak_share']:>6.1f}% {_ratio(f['vs_separate']):>10} {_ratio(f['vs_best_solo']):>11} "
                     f"{_ratio(f['vs_baseline']):>10}")
    for b in record["baselines"]:
        lines.append(f"baseline (eager fp32, DataLoader) {b['model']} batch {b['batch_size']}: "
                     f"{b['images_per_s']:.1f} images/s, {b['step_time_ms_mean']:.2f} ms/step")
    for layer in record["layers"]:
        lines.append(f"per-layer alternatives, {layer['model']} batch {layer['batch_size']} K={layer['members']}: "
                     f"the alternative wins {layer['alternative_wins']} of {len(layer['layers'])} shapes "
                     f"(~{layer['step_saving_ms']:.2f} ms/step saved if used)"
                     + (f", {layer['not_measured']} not measured (budget)" if layer["not_measured"] else ""))
        for row in layer["layers"][:8]:
            lines.append(f"  {row['kernel'][0]}x{row['kernel'][1]} s{row['stride'][0]} {row['in_channels']}->"
                         f"{row['out_channels']} at {row['input_hw'][0]}x{row['input_hw'][1]} (x{row['count']}): "
                         f"grouped {row['grouped_ms']:.3f} ms, {row['alternative']} {row['alternative_ms']:.3f} ms "
                         f"-> {row['winner']}")
    for f in record["failed"]:
        lines.append(f"failed: {f['item']}: {f['error']}")
    if record["skipped"]:
        reasons = sorted({s["reason"].split(" (")[0] for s in record["skipped"]})
        lines.append(f"skipped {len(record['skipped'])} of {len(record['plan'])} ({'; '.join(reasons)}): "
                     + ", ".join(s["item"] for s in record["skipped"][:6])
                     + (", ..." if len(record["skipped"]) > 6 else ""))
    for t in record["targets"]:
        if t["met"] is None:
            lines.append(f"target not measured: {t['target']}")
        else:
            shown = f"{100 * t['measured']:.1f} %" if "peak" in t["target"] else f"{t['measured']:.2f}x"
            lines.append(f"target {'MET' if t['met'] else 'NOT met'}: {t['target']}: {shown}")
    lines.append(f"spent {record['spent_seconds']:.1f} s" + (f" of a {record['budget_seconds']:g} s budget"
                                                             if record["budget_seconds"] is not None else ""))
    return "\n".join(lines)


def _write_atomic(path: Path, record: dict) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")


def main_fused(args: argparse.Namespace, clock_start: float) -> int:
    if args.fused_batches is None:
        args.fused_batches = [64, quick_batch_size()]
    path = args.out / FUSED_FILE if args.out else args.json
    try:
        if args.suite:
            raise RanlibError("--fused and --suite are separate benchmarks; pass one")
        if path is not None and path.exists() and not args.overwrite:  # before the measuring
            raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
        record = run_fused(args, clock_start, save=None if path is None else lambda r: _write_atomic(path, r))
        print(fused_report(record), flush=True)
        if path is not None:
            _write_atomic(path, record)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0
