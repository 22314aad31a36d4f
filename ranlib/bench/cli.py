"""Training-step benchmark: ``python -m ranlib.bench --model cifar_attention92 --batch-size 64 ...``.

The command line of ``python -m ranlib.bench`` (the line above is its ``--help`` description): the
parser, :data:`SUITE` (``--suite``: every configuration with its baseline), one configuration's
record (:func:`bench_one`) and report lines, and :func:`main`, which hands each benchmark to its
module: the training step and its baseline (:mod:`ranlib.bench.step`), its profile (``--profile``,
:mod:`ranlib.bench.profile`), several trainings at once (``--processes``,
:mod:`ranlib.bench.concurrent`), fused populations (``--fused``, :mod:`ranlib.bench.fused`) and the
CPU's figures. ``python -m ranlib.bench`` passes the process's start (:func:`process_age_seconds`)
so that ``--budget-seconds`` counts the interpreter's start and torch's import too.

``--device cpu`` alone (no ``--precision``, ``--channels-last``, ``--image-size`` or other mode)
prints the CPU's figures instead (:mod:`ranlib.bench.cpu`): the training step's images/s
per precision and memory format, the bf16 and fp32 matrix-product peaks and the step's share of
them, and with ``--dataset``/``--data-root`` the real loop's share of the bare step, written to
``--out DIR/cpu-<model>.json``; ``--precision-check`` trains fp32 seeds 0 and 1 and bf16 seed 0
alike and compares their loss curves (``--out DIR/precision-check-<model>-b<batch>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ranlib.errors import RanlibError, ResultsExistError, print_error, quiet_on_closed_pipe
from ranlib.training import provenance
from ranlib.training.config import COMPILE_MODES
from ranlib.training.results import benchmark_file_name, setup_text
from ranlib.training.runtime import PEAK_MATMUL_SIZE, PEAK_MATMUL_SIZE_CPU

from . import profile as profile_bench
from .concurrent import measure_concurrent
from .fused import FUSED_FILE, FUSED_MEMBERS, FUSED_MODELS, main_fused
from .profile import profile_report
from .step import bf16_peak_tflops, measure


def _format_row(label: str, r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    return (f"{label:<10} {r['images_per_s']:>10.1f} {r['step_time_ms_mean']:>9.2f} {r['step_time_ms_median']:>9.2f} "
            f"{r['peak_memory_bytes'] / 2**30:>9.2f} {mfu:>7}   {setup_text(r)}")


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: a model at a batch size, and options of ranlib's path."""

    model: str
    batch_size: int
    grad_checkpointing: bool = False


# The configurations measured side by side with the plain baseline (--suite). The paper's CIFAR batch,
# ranlib's GPU-profile batch, the ResNet-164 baseline, and the ImageNet networks at 224; Attention-56
# both ways, for its memory target.
SUITE = (
    Case("cifar_attention92", 64),
    Case("cifar_attention92", 256),  # the `quick` profile's batch (ranlib.training.recipes.PROFILES)
    Case("cifar_resnet164", 64),
    Case("attention56", 64),
    Case("attention56", 64, grad_checkpointing=True),
    Case("attention92", 64),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ranlib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="default cifar_attention92 (cifar_attention56 for the CPU's figures)")
    p.add_argument("--batch-size", type=int, help="default 64 (the CPU's figures: the candidates of the CPU profiles)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CUDA and on a CPU with native bf16, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="torch.compile mode (implies --compile), e.g. reduce-overhead: CUDA graphs, less Python per step")
    p.add_argument("--steps", type=int, help="timed steps (default 50; the CPU's figures: 5)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; with --fused 5, and at least "
                   "the CUDA graph's warm-up and capture; the CPU's figures: 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, help="input resolution of a 224 model (e.g. 320, the paper's "
                   "Attention-92 test size); default: the model's training size")
    p.add_argument("--num-images", type=int, help="synthetic training images (default 50,000 on CUDA, 4 batches on CPU)")
    p.add_argument("--baseline", action="store_true",
                   help="also measure eager fp32 NCHW with a torchvision-transforms DataLoader, and the ratio")
    p.add_argument("--baseline-workers", type=int, default=min(4, len(os.sched_getaffinity(0))),
                   help="DataLoader workers of the baseline (default: 4, or fewer on fewer cores)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the attention mask branches in backward (less memory; attention models only)")
    p.add_argument("--suite", action="store_true", help="measure every configuration of SUITE with its baseline "
                   "(ignores --model/--batch-size/--grad-checkpointing)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help=f"then profile {profile_bench.PROFILE_STEPS} more steps: where the time goes, "
                        "in DIR/<name>-profile.json")
    p.add_argument("--processes", type=int, metavar="K",
                   help="also run K copies of ranlib's measurement at once on the device; total images/s vs one")
    cpu = p.add_argument_group("the CPU's figures (--device cpu alone) and the bf16 check (--precision-check)")
    cpu.add_argument("--precision-check", action="store_true",
                     help="train fp32 seeds 0 and 1 and bf16 seed 0 alike on the CPU and compare their loss curves")
    cpu.add_argument("--dataset", help="the real loop's data set (e.g. cifar10-jpeg); without it the CPU's figures "
                     "leave the loop out")
    cpu.add_argument("--data-root")
    cpu.add_argument("--iterations", type=int, help="training iterations of each run (default 40; --precision-check 200)")
    cpu.add_argument("--max-test-samples", type=int, default=1000, help="test images of each run's evaluation")
    fused = p.add_argument_group("horizontal fusion (--fused)")
    fused.add_argument("--fused", action="store_true",
                       help="measure K fused members (ranlib.models.fused, ranlib.training.step.TrainStep) against solo "
                            f"runs and the plain baseline; writes {FUSED_FILE} (ignores --model/--batch-size)")
    fused.add_argument("--fused-models", nargs="+", default=list(FUSED_MODELS), metavar="MODEL")
    fused.add_argument("--members", nargs="+", type=int, default=list(FUSED_MEMBERS), metavar="K")
    fused.add_argument("--fused-batches", nargs="+", type=int, metavar="B",
                       help="batch sizes per member (default: 64 and the quick profile's)")
    fused.add_argument("--graphs", choices=("both", "on", "off"), default="both",
                       help="the step as one CUDA graph, eager, or both (graph configurations need CUDA)")
    fused.add_argument("--budget-seconds", type=float, metavar="S",
                       help="start no measurement after S seconds from launch (nor one predicted to overrun); "
                            "what is left is recorded as skipped")
    fused.add_argument("--seconds-per-config", type=float, default=1.5, metavar="S",
                       help="time at most --steps steps, fewer if they would take longer than S (at least 3)")
    fused.add_argument("--peak-size", type=int, metavar="N",
                       help=f"matrix-peak measurement size (default {PEAK_MATMUL_SIZE} on CUDA, "
                            f"{PEAK_MATMUL_SIZE_CPU} on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures with provenance to this file")
    p.add_argument("--out", type=Path, help="write each configuration's figures to a file named after it in this folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing figure files")
    return p


def bench_one(case: Case, args: argparse.Namespace, *, baseline: bool) -> dict:
    """Measure one configuration with the settings in ``args``; the record written to disk.

    With ``--profile`` the record has a ``"profile"`` entry, which ``main`` writes to its own file.
    """
    import ranlib
    from ranlib.training.recipes import PROFILES, RECIPES
    from ranlib.training.runtime import Dist, resolve_precision, select_device

    model_name, batch_size = case.model, case.batch_size
    try:
        info = ranlib.model_info(model_name)
    except ranlib.UnknownModelError as exc:
        raise RanlibError(str(exc)) from None
    if args.steps < 1 or args.warmup < 0 or batch_size < 1 or (args.processes is not None and args.processes < 1):
        raise RanlibError("need --steps >= 1, --warmup >= 0, --batch-size >= 1 and --processes >= 1")
    size = args.image_size if args.image_size and info.input_size != 32 else info.input_size
    if args.image_size and info.input_size == 32 and not args.suite:
        raise RanlibError(f"{model_name} is a 32x32 CIFAR model; --image-size applies to the 224 models")
    device = select_device(args.device, Dist())
    precision = resolve_precision(args.precision, device)
    channels_last = True if args.channels_last is None else args.channels_last
    num_images = args.num_images or (50_000 if device.type == "cuda" else 4 * batch_size)
    started = provenance.utc_now()
    common = dict(batch_size=batch_size, device=device, steps=args.steps, warmup=args.warmup,
                  num_images=max(num_images, batch_size), seed=args.seed, image_size=size)
    fast = dict(precision=precision, channels_last=channels_last,
                compile_model=args.compile or args.compile_mode is not None, compile_mode=args.compile_mode,
                data="gpu_batches" if size == 32 else "synthetic_device", grad_checkpointing=case.grad_checkpointing,
                **common)
    figures = {"ranlib": measure(model_name, profile_steps=profile_bench.PROFILE_STEPS if args.profile else 0,
                                 **fast)}
    profiled = figures["ranlib"].pop("profile", None)
    if baseline:
        figures["baseline"] = measure(model_name, precision="fp32", channels_last=False, compile_model=False,
                                      data="dataloader" if size == 32 else "synthetic_device",
                                      workers=args.baseline_workers, **common)
    concurrent = None
    if args.processes:
        concurrent = measure_concurrent(model_name, args.processes, fast)
        concurrent["one_process_images_per_s"] = figures["ranlib"]["images_per_s"]  # measured alone, above
        concurrent["ratio"] = concurrent["aggregate_images_per_s"] / concurrent["one_process_images_per_s"]
    counts = {k: figures["ranlib"][k] for k in ("params", "macs")}
    for f in figures.values():
        del f["params"], f["macs"]
    # What the measured rate means for whole schedules (training steps only: no evaluation, no start-up).
    recipe = RECIPES[info.dataset]
    paper_images = recipe.iterations * recipe.batch_size
    rate = figures["ranlib"]["images_per_s"]
    projection = {"paper_schedule_images": paper_images, "paper_schedule_min": paper_images / rate / 60,
                  "quick_profile_min": paper_images * PROFILES[info.dataset]["quick"].fraction / rate / 60}
    return {
        "benchmark": 1, "model": model_name, "input_size": size, "batch_size": batch_size, **counts,
        "device_name": provenance.device_name(device),
        "bf16_peak_tflops": bf16_peak_tflops(provenance.device_name(device)) if device.type == "cuda" else None,
        **figures,
        "speedup": figures["ranlib"]["images_per_s"] / figures["baseline"]["images_per_s"] if baseline else None,
        "projection": projection,
        **({"concurrent": concurrent} if concurrent else {}),
        **({"profile": profiled} if profiled else {}),
        "provenance": provenance.collect(device, precision=precision, seed=args.seed, started_at=started),
    }


def report(record: dict) -> str:
    lines = [f"ranlib bench: {record['model']} at {record['input_size']}x{record['input_size']}, batch "
             f"{record['batch_size']}, on {record['device_name']}",
             f"{'path':<10} {'images/s':>10} {'step ms':>9} {'median':>9} {'peak GiB':>9} {'MFU':>7}   setup",
             _format_row("ranlib", record["ranlib"])]
    if "baseline" in record:
        lines.append(_format_row("baseline", record["baseline"]))
        lines.append(f"speed-up ranlib / baseline: {record['speedup']:.2f}x")
    if "concurrent" in record:
        c = record["concurrent"]
        lines.append(f"{c['processes']} processes at once: {c['aggregate_images_per_s']:.1f} images/s in all "
                     f"(each: {', '.join(f'{r:.1f}' for r in c['images_per_s'])}), {c['ratio']:.2f}x one "
                     "process's rate")
    projection = record["projection"]
    lines.append(f"at this rate the paper's schedule ({projection['paper_schedule_images']:,} images) takes "
                 f"{projection['paper_schedule_min']:.1f} min of training steps, the quick profile "
                 f"{projection['quick_profile_min']:.1f} min")
    if record["ranlib"]["data"] == "synthetic_device":
        lines.append("note: 224 models are fed device-resident synthetic batches; data loading is not measured")
    return "\n".join(lines)


def _write(path: Path | None, record: dict, overwrite: bool) -> None:
    if path is None:
        return
    if path.exists() and not overwrite:
        raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


@quiet_on_closed_pipe
def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """``started``: the ``time.perf_counter()`` from which ``--budget-seconds`` counts (default: now;
    ``python -m ranlib.bench`` passes its process's start)."""
    clock_start = time.perf_counter() if started is None else started
    args = build_parser().parse_args(argv)
    if args.fused:
        args.steps = 50 if args.steps is None else args.steps
        return main_fused(args, clock_start)
    if args.precision_check or _cpu_figures_asked(args):
        return main_cpu(args)
    args.model, args.batch_size = args.model or "cifar_attention92", args.batch_size or 64
    args.steps = 50 if args.steps is None else args.steps
    if args.warmup is None:
        args.warmup = 10
    configurations = SUITE if args.suite else (Case(args.model, args.batch_size, args.grad_checkpointing),)
    try:
        if args.json is not None and args.json.exists() and not args.overwrite:  # before minutes of measuring
            raise ResultsExistError(f"{args.json} already exists; pass --overwrite to replace it or choose "
                                    "another path")
        if args.json is not None and len(configurations) > 1:
            raise RanlibError("--suite writes several files: use --out DIR instead of --json")
        for case in configurations:
            record = bench_one(case, args, baseline=args.baseline or args.suite)
            profiled = record.pop("profile", None)
            print(report(record), flush=True)
            _write(args.out / benchmark_file_name(record) if args.out else args.json, record, args.overwrite)
            if profiled is not None:
                print(profile_report(profiled), flush=True)
                # "benchmark" as in the figures files, so that results loaders skip it
                context = {k: record[k] for k in ("benchmark", "model", "input_size", "batch_size", "device_name")}
                _write(args.profile / (benchmark_file_name(record)[:-len(".json")] + "-profile.json"),
                       {**context, "setup": setup_text(record["ranlib"]), **profiled}, args.overwrite)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0


def _cpu_figures_asked(args: argparse.Namespace) -> bool:
    """``--device cpu`` without a precision, memory format or another benchmark: the CPU's figures."""
    single = (args.precision != "auto" or args.channels_last is not None or args.suite or args.processes
              or args.profile or args.baseline or args.compile or args.compile_mode or args.grad_checkpointing
              or args.image_size or args.num_images)
    return args.device == "cpu" and not single


def main_cpu(args: argparse.Namespace) -> int:
    """The CPU's figures or, with ``--precision-check``, the bf16-vs-fp32 training check (:mod:`ranlib.bench.cpu`)."""
    from . import cpu as cpu_bench

    try:
        if (args.dataset is None) != (args.data_root is None):
            raise RanlibError("--dataset and --data-root go together: give both (e.g. --dataset cifar10-jpeg "
                              "--data-root ../shared/data/cifar10-jpeg) or neither")
        if args.precision_check and args.dataset is None:
            raise RanlibError("--precision-check trains on real data: add --dataset and --data-root")
        model = args.model or "cifar_attention56"
        if args.precision_check:
            batch = args.batch_size or 64
            name = cpu_bench.file_name({"benchmark": "precision_check", "model": model, "batch_size": batch})
        else:
            name = cpu_bench.file_name({"benchmark": "cpu", "model": model})
        path = args.out / name if args.out else args.json
        if path is not None and path.exists() and not args.overwrite:  # before minutes of measuring
            raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
        if args.precision_check:
            record = cpu_bench.precision_check(model, dataset=args.dataset, data_root=args.data_root, batch_size=batch,
                                               iterations=args.iterations or 200,
                                               max_test_samples=args.max_test_samples)
            print(cpu_bench.precision_report(record), flush=True)
        else:
            record = cpu_bench.cpu_figures(model, batch_size=args.batch_size, steps=args.steps or 5,
                                           warmup=2 if args.warmup is None else args.warmup, peak_size=args.peak_size,
                                           dataset=args.dataset, data_root=args.data_root,
                                           iterations=args.iterations or 40, max_test_samples=args.max_test_samples,
                                           seed=args.seed)
            print(cpu_bench.cpu_report(record), flush=True)
        _write(path, record, overwrite=True)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0


def process_age_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where unknown), so that a budget
    counts the interpreter's start and torch's import too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
