"""One GPU sitting with no one in the loop: ``python -m ranlib.campaign sitting --minutes M --out DIR``.

A lent GPU comes for minutes, one command at a time, and only the files in ``DIR`` come back. A
sitting therefore decides nothing on the way and loses little when it is cut off:

1. **Preflight** (about 20 s): every path the sitting will use is tried once on the device — a
   fused training step, bf16 autocast, the convolutions chosen by measurement (compared with the
   grouped ones), the step captured as a CUDA graph (compared with the eager step it replaces),
   evaluation, writing and reading a checkpoint — and the training throughput
   of a fused group is measured. A failing path is switched off for the rest of the sitting, with
   the reason logged; the sitting goes on without it.
2. **Benchmark** (``--bench-seconds``, about 60 s): ``ranlib.bench.fused``'s fused-population figures,
   written to ``<results-dir>/performance``, when the bench supports them.
3. **The study, claims first** (:func:`study_slices`): the quick profile's seed 0 of Table 3 with
   Figure 4, Table 5, Table 1 and Table 4, then seed 1 of the same, then the JPEG-cost evaluation
   of a trained Attention-92 and a checkpoint for the masks figure, then Table 6's larger networks,
   then full-length runs of the claim rows (the ``full`` profile: the paper's 205 epochs at the
   smallest batch, under the large-batch rule, that finishes in the time left; judged on
   orderings only, see ``ranlib.study.verdicts``).
   Runs with results (committed or from this sitting) are left out; the rest are put into fused
   groups (:func:`ranlib.study.planning.group_runs`), each group's time is estimated from the measured
   throughput, and only groups expected to finish inside the budget are started. With
   ``--dataset imagewoof`` (a call that carries the Imagewoof data) the slice is Table 7's
   networks on Imagewoof instead.
4. After every group, the results, ledger lines, metrics and logs are packed into
   ``DIR/sitting.tar.gz`` (rewritten atomically, a few MB): a kill at the time limit loses only the
   group in flight, whose checkpoints the next sitting resumes.
5. It ends with a short table: what ran, what failed and why, images/s, minutes left.

This module holds the parts (slices, preflight, estimates, the closing table); the command that
strings them together is the ``sitting`` command of ``ranlib.campaign.cli``, beside the campaign it drives.

Back here, ``make unpack ARCHIVE=DIR/sitting.tar.gz`` puts the archive into ``results/`` (never
replacing a differing file) and re-renders the book.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ranlib.errors import RanlibError

ARCHIVE_NAME = "sitting.tar.gz"
GROUP_STARTUP_S = 20.0  # a group's process: imports, data, model building, graph capture
CLAIM_EXPERIMENTS = ("arl_vs_nal", "label_noise", "attention_types", "mask_structure")
# The rows whose claims most need the paper's length, and the batches the full profile may take.
FULL_LENGTH_EXPERIMENTS = ("arl_vs_nal", "label_noise")
FULL_LENGTH_ROWS = ("attention92-arl", "attention92-nal", "attention92-noise70", "resnet164-noise70")
FULL_BATCHES = (64, 128, 256, 512, 1024, 2048)
JPEG_GAP_ROW = ("label_noise", "attention92-noise10")  # a trained Attention-92 for the JPEG cost
MASKS_EXPERIMENT = "attention_masks"


@dataclass
class Slice:
    """A part of the study: experiments at a profile and seeds, or a step that is not training."""

    name: str
    experiments: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    profile: str | None = None  # None: the sitting's --profile
    rows: tuple[str, ...] | None = None  # None: every row of the experiments
    # "train"; "jpeg_gap": the JPEG cost of a trained Attention-92; "imagewoof_masks": a trained
    # Attention-56's masks on Imagewoof photos, kept as a small file (its checkpoint is too large to carry)
    action: str = "train"


def study_slices(seeds: Sequence[int], dataset: str) -> list[Slice]:
    """The order in which a sitting works through the study: what answers the paper's claims first."""
    if dataset == "imagewoof":  # both seeds in one slice: they train as one fused group per network
        return [Slice("Table 7's networks on Imagewoof", ("imagewoof",), tuple(seeds)),
                Slice("soft masks on photos", action="imagewoof_masks")]
    slices = [Slice(f"claims (Tables 3, 5, 1, 4), seed {s}", CLAIM_EXPERIMENTS, (s,)) for s in seeds[:2]]
    slices.append(Slice("JPEG cost of a trained Attention-92", action="jpeg_gap"))
    slices.append(Slice("a checkpoint for the masks figure", (MASKS_EXPERIMENT,), tuple(seeds[:1])))
    slices += [Slice(f"Table 6's larger networks, seed {s}", ("cifar_sota",), (s,)) for s in seeds[:2]]
    slices += [Slice(f"claims, seed {s}", CLAIM_EXPERIMENTS, (s,)) for s in seeds[2:]]
    slices.append(Slice("full-length claim rows (the paper's epochs, the smallest batch that finishes)",
                        FULL_LENGTH_EXPERIMENTS, tuple(seeds[:2]), profile="full", rows=FULL_LENGTH_ROWS))
    return slices


def fit_batch(group: Sequence[dict], seconds: float, speed: "StepModel | None", *,
              checkpoint_dir: Path) -> list[dict] | None:
    """The ``full``-profile group at the smallest batch in :data:`FULL_BATCHES` expected to finish in
    ``seconds`` (at the batch of a checkpoint to resume, if any); None if none does."""
    from ranlib.study.planning import named

    candidates = [[named(dict(c, batch_size=batch)) for c in group] for batch in FULL_BATCHES]
    resumable = [g for g in candidates
                 if any((checkpoint_dir / c["experiment"] / c["run_name"] / "last.pt").is_file() for c in g)]
    return next(iter(resumable), None) or next((g for g in candidates if estimate_group_s(g, speed) <= seconds), None)


# --------------------------------------------------------------------------------------------
# Preflight


@dataclass(frozen=True)
class StepModel:
    """A training step's time on this device: a fixed cost (kernel launches, the optimizer; what a
    small batch is bound by) plus its multiply-adds at a rate. Fitted to two measured batch sizes."""

    overhead_s: float
    macs_per_s: float

    def step_s(self, macs: float) -> float:
        return self.overhead_s + macs / self.macs_per_s

    @classmethod
    def fit(cls, small: tuple[float, float], large: tuple[float, float]) -> "StepModel":
        """From (multiply-adds, seconds) of one step at a small and a large batch."""
        (m1, t1), (m2, t2) = small, large
        if t2 <= t1 or m2 <= m1:  # no measurable difference: all of it is work
            return cls(0.0, m2 / t2)
        rate = (m2 - m1) / (t2 - t1)
        return cls(max(t1 - m1 / rate, 0.0), rate)


@dataclass
class Preflight:
    """What works on this device, and how fast a training step is."""

    checks: dict[str, dict] = field(default_factory=dict)  # path -> {"ok", "seconds", "detail"}
    speed: StepModel | None = None

    def ok(self, name: str) -> bool:
        return self.checks.get(name, {}).get("ok", False)

    def overrides(self) -> dict:
        """TrainConfig fields that switch off what failed."""
        out = {}
        if "cuda_graphs" in self.checks and not self.ok("cuda_graphs"):
            out["cuda_graphs"] = False
        if "bf16" in self.checks and not self.ok("bf16"):
            out["precision"] = "fp32"
        if "conv_autotune" in self.checks and not self.ok("conv_autotune"):
            out["conv_autotune"] = False
        return out

    def max_group(self, wanted: int) -> int:
        return wanted if self.ok("fused_step") else 1

    def blocker(self) -> str | None:
        """Why no training can give results here (evaluating or writing checkpoints failed), if so."""
        failed = [name for name in ("evaluation", "checkpoint") if not self.ok(name)]
        return f"{' and '.join(failed)} failed in the preflight" if failed else None


class NotApplicable(Exception):
    """A path this device does not have (CUDA graphs on a CPU): not tried, not a failure."""


def _check(report: Preflight, name: str, fn: Callable[[], str]) -> None:
    start = time.perf_counter()
    try:
        detail, ok = fn(), True
    except NotApplicable as why:
        print(f"sitting: preflight {name}: not applicable ({why})", flush=True)
        return
    except Exception as exc:  # a failing path is switched off, never fatal
        detail, ok = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", False
        traceback.print_exc()
    report.checks[name] = {"ok": ok, "seconds": round(time.perf_counter() - start, 2), "detail": detail}
    print(f"sitting: preflight {name}: {'ok' if ok else 'FAILED, switched off'} ({detail})", flush=True)


def preflight(device_request: str, *, batch_size: int, members: int = 4,
              model: str = "cifar_attention56") -> Preflight:
    """Try every path a sitting uses on the device (see the module docstring), at ``batch_size``."""
    import torch

    import ranlib
    from ranlib.models.fused import choose_conv_impls, fuse, member_state_dict
    from ranlib.training.checkpoint import load_checkpoint, save_checkpoint
    from ranlib.training.evaluation import evaluate_members
    from ranlib.training.runtime import Dist, autocast, cuda_time_s, select_device, synchronize
    from ranlib.training.step import GRAPH_WARMUP_STEPS, TrainStep

    report = Preflight()
    device = select_device(device_request, Dist())
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    built = {}

    def group(precision: str, graphs: bool, autotune: bool = False):
        torch.manual_seed(0)
        solo = [ranlib.create_model(model) for _ in range(members)]
        fused = fuse(solo).to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
        if autotune:
            with autocast(device, precision):
                built["conv_impls"] = choose_conv_impls(fused, batches[0][0], cuda_time_s)["layers"]
        optimizer = torch.optim.SGD(fused.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                    fused=graphs or None)
        windows = [torch.zeros(members, 3, dtype=torch.float64, device=device)]
        return fused, TrainStep(fused, fused, optimizer, windows=windows, precision=precision, cuda_graphs=graphs), \
            solo[0].state_dict()

    generator = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randn(batch_size, 3 * members, 32, 32, device=device, generator=generator),
                torch.randint(0, 10, (batch_size, members), device=device, generator=generator))
               for _ in range(GRAPH_WARMUP_STEPS + 3)]

    def fused_step():
        fused, step, reference = group("fp32", False)
        for x, y in batches[:2]:
            step(x, y)
        synchronize(device)
        built["fp32"] = (fused, reference)
        if not all(torch.isfinite(p).all() for p in fused.parameters()):
            raise RanlibError("non-finite parameters after two fused steps")
        return f"{members} x {model}, batch {batch_size}, 2 steps"

    def bf16():
        if not cuda:
            raise NotApplicable("bf16 autocast is for CUDA here; CPU trains in fp32")
        fused, step, _ = group("bf16", False)
        for x, y in batches[:2]:
            step(x, y)
        synchronize(device)
        return "2 fused steps under bf16 autocast"

    def drift(test, reference) -> float:
        """The largest parameter difference of two trainings of one group, relative to the parameter."""
        return max((a - b).abs().max().item() / (b.abs().max().item() or 1.0)
                   for a, b in zip(test.parameters(), reference.parameters()))

    def conv_autotune():
        if not cuda:
            raise NotApplicable("the convolutions are timed with CUDA events")
        precision = "bf16" if report.ok("bf16") else "fp32"
        (grouped, grouped_step, _), (tuned, tuned_step, _) = group(precision, False), group(precision, False, True)
        for x, y in batches[:3]:
            grouped_step(x, y)
            tuned_step(x, y)
        synchronize(device)
        worst = drift(tuned, grouped)
        if not worst < 1e-2:
            raise RanlibError(f"the chosen convolutions drift from the grouped ones by {worst:.3g} (relative)")
        return f"layers {built['conv_impls']}; 3 steps match the grouped convolutions within {worst:.2g} (relative)"

    def cuda_graphs():
        if not cuda:
            raise NotApplicable("CUDA graphs need CUDA")
        precision = "bf16" if report.ok("bf16") else "fp32"
        eager, eager_step, _ = group(precision, False)
        graphed, graph_step, _ = group(precision, True, report.ok("conv_autotune"))
        for x, y in batches:
            eager_step(x, y)
            graph_step(x, y)
        synchronize(device)
        if graph_step.graph is None:
            raise RanlibError("capture fell back to eager")
        worst = drift(graphed, eager)
        if not worst < 1e-2:
            raise RanlibError(f"graph replay drifts from the eager step by {worst:.3g} (relative)")
        return f"captured after {GRAPH_WARMUP_STEPS} eager steps; {len(batches) - GRAPH_WARMUP_STEPS} replays " \
               f"match eager within {worst:.2g} (relative)"

    def evaluation():
        fused, _ = built["fp32"]
        x, y = batches[0]
        from ranlib.data.batches import GpuBatches
        images = torch.randint(0, 256, (2 * batch_size, 32, 32, 3), dtype=torch.uint8)
        test = GpuBatches(images, torch.randint(0, 10, (2 * batch_size,)), batch_size=batch_size, train=False,
                          device=device, mean=(0.5, 0.5, 0.5))
        results = evaluate_members(fused, test, device, "fp32", members=members)
        if [r["count"] for r in results] != [2 * batch_size] * members:
            raise RanlibError(f"evaluation counted {[r['count'] for r in results]} images")
        return f"{members} members x {2 * batch_size} images"

    def checkpoint():
        fused, reference = built["fp32"]
        state = member_state_dict(fused.state_dict(), 0, members, reference=reference, steps=2)
        with tempfile.TemporaryDirectory() as folder:
            path = save_checkpoint(Path(folder) / "last.pt", {"model": state})
            back = load_checkpoint(path)["model"]
        if any(not torch.equal(back[k].cpu(), v.cpu()) for k, v in state.items()):
            raise RanlibError("a checkpoint read back differs")
        ranlib.create_model(model).load_state_dict(back, strict=True)
        return "a member's checkpoint written, read back and loaded into a solo model"

    def seconds_per_step(size: int) -> float:
        precision = "bf16" if report.ok("bf16") else "fp32"
        _, step, _ = group(precision, report.ok("cuda_graphs"), report.ok("conv_autotune"))
        data = [(x[:size], y[:size]) for x, y in batches]
        for x, y in data:  # warm-up (and capture)
            step(x, y)
        synchronize(device)
        start, steps = time.perf_counter(), 0
        while steps < 5 or time.perf_counter() - start < 1.5:
            step(*data[steps % len(data)])
            steps += 1
            if steps % 5 == 0:
                synchronize(device)
        synchronize(device)
        return (time.perf_counter() - start) / steps

    def throughput():
        macs = 3 * ranlib.complexity(ranlib.create_model(model), 32)["macs"] * members  # per image, all members
        small = max(batch_size // 4, 1)
        report.speed = StepModel.fit((macs * small, seconds_per_step(small)),
                                     (macs * batch_size, seconds_per_step(batch_size)))
        rate = batch_size * members / report.speed.step_s(macs * batch_size)
        return (f"{rate:.0f} images/s at batch {batch_size} x {members}; a step costs "
                f"{1e3 * report.speed.overhead_s:.2f} ms + its multiply-adds at "
                f"{2 * report.speed.macs_per_s / 1e12:.2f} TFLOP/s")

    for name, fn in (("fused_step", fused_step), ("bf16", bf16), ("conv_autotune", conv_autotune),
                     ("cuda_graphs", cuda_graphs),
                     ("evaluation", evaluation), ("checkpoint", checkpoint), ("throughput", throughput)):
        if name in ("evaluation", "checkpoint") and "fp32" not in built:
            report.checks[name] = {"ok": False, "seconds": 0.0, "detail": "needs the fused step"}
            continue
        _check(report, name, fn)
    return report


# --------------------------------------------------------------------------------------------
# The sitting


def estimate_group_s(group: Sequence[dict], speed: "StepModel | None") -> float:
    """Expected seconds for a fused group: start-up, its training steps (one per iteration for all
    members at once) and its evaluations, at the device's measured :class:`StepModel`."""
    import math

    from ranlib.models.complexity import model_counts
    from ranlib.training.config import TrainConfig, resolve

    if speed is None:
        return GROUP_STARTUP_S
    resolved = [resolve(TrainConfig(**config)) for config in group]
    macs = [model_counts(c.model, c.model_kwargs, input_size=c.train_size)["macs"] for c in resolved]
    first = resolved[0]  # members share the schedule, batch and data
    step_macs = sum(3 * m * first.batch_size for m in macs)  # a training step: about three forward passes
    evaluations = math.ceil(first.iterations / first.eval_every)
    eval_macs = evaluations * (first.max_test_samples or 10_000) * sum(macs)
    return GROUP_STARTUP_S + first.iterations * speed.step_s(step_macs) + eval_macs / speed.macs_per_s


@dataclass
class SittingLog:
    """What happened, for the closing table and ``DIR/sitting.json``."""

    started_at: str
    budget_s: float
    steps: list[dict] = field(default_factory=list)

    def add(self, step: str, status: str, detail: str = "", seconds: float = 0.0) -> None:
        self.steps.append({"step": step, "status": status, "detail": detail, "seconds": round(seconds, 1)})
        print(f"sitting: {step}: {status}{' (' + detail + ')' if detail else ''}", flush=True)


def _trained_checkpoint(args, experiment: str, row: str) -> Path:
    """The checkpoint of the first seed's run of ``row``: the one whose results record is that training
    (whatever its name), else where the planned run writes it."""
    from ranlib.study.planning import find_training, plan_runs

    [config] = plan_runs(experiment, profile=args.profile, seeds=args.seeds[:1], dataset=args.dataset,
                         data_root=args.data_root, results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir,
                         rows=[row])
    record = find_training(config, args.results_dir) or config
    return args.checkpoint_dir / record["experiment"] / record["run_name"] / "last.pt"


def jpeg_gap_step(args, log: SittingLog) -> None:
    """The JPEG-cost evaluation (``ranlib.study.jpeg_gap``) of the first seed's trained Attention-92."""
    from ranlib.study.jpeg_gap import jpeg_gap

    if args.dataset != "cifar10-jpeg":
        log.add("JPEG cost", "not applicable", "it is measured on the cifar10-jpeg copy and its exact test subset")
        return
    t0 = time.monotonic()
    checkpoint = _trained_checkpoint(args, *JPEG_GAP_ROW)
    target = args.results_dir / "jpeg_gap" / f"{checkpoint.parent.name}.json"
    if target.exists():
        log.add("JPEG cost", "done before", str(target))
    elif not checkpoint.is_file():
        log.add("JPEG cost", "not run", f"no trained Attention-92 checkpoint at {checkpoint}")
    else:
        try:
            result = jpeg_gap(checkpoint, data_root=args.data_root, device=args.device)
        except Exception as exc:  # the study goes on without it
            log.add("JPEG cost", "failed", f"{type(exc).__name__}: {exc}"[:200], time.monotonic() - t0)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=1) + "\n")
        log.add("JPEG cost", "ok", f"jpeg - exact = {result['jpeg_minus_exact']:+.2f} points", time.monotonic() - t0)


def imagewoof_masks_step(args, log: SittingLog) -> None:
    """The first seed's Imagewoof Attention-56 masks (``plots.write_checkpoint_masks``) for the masks chapter."""
    from ranlib.study.plots import write_checkpoint_masks

    checkpoint = _trained_checkpoint(args, "imagewoof", "attention56")
    target = args.results_dir / "attention_masks" / "imagewoof_attention56_masks.npz"
    if not checkpoint.is_file():
        log.add("masks on photos", "not run", f"no trained Attention-56 at {checkpoint}")
        return
    t0 = time.monotonic()
    try:
        write_checkpoint_masks(checkpoint, target, device=args.device)
    except Exception as exc:  # the figure is missing, nothing else
        log.add("masks on photos", "failed", f"{type(exc).__name__}: {exc}"[:200], time.monotonic() - t0)
        return
    log.add("masks on photos", "ok", str(target), time.monotonic() - t0)


def print_table(log: SittingLog, args, left: float) -> None:
    from ranlib.study.experiments import EXPERIMENTS
    from ranlib.training.results import load_results

    print("\nsitting: what ran")
    for step in log.steps:
        print(f"  {step['step']}: {step['status']} ({step['seconds']:.0f} s)")
        if step["detail"] and step["status"] not in ("ok", "done before"):
            print(f"      {step['detail'][:200]}")
    finished = []
    for folder in sorted(args.results_dir / name for name in EXPERIMENTS if (args.results_dir / name).is_dir()):
        for record in load_results(folder):
            if record.get("provenance", {}).get("started_at", "") >= log.started_at:
                finished.append(record)
    for record in finished:
        size = record["provenance"].get("group", {}).get("size", 1)
        rate = record["cost"].get("group_images_per_s") or record["cost"]["images_per_s"]
        trained = f"one of {size} fused, {rate:.0f} img/s for the group" if size > 1 else f"alone, {rate:.0f} img/s"
        print(f"  {record['run_name']}: top-1 error {record['final']['top1_error']:.2f} % ({trained})")
    print(f"sitting: {len(finished)} run{'' if len(finished) == 1 else 's'} finished in this sitting; "
          f"{max(left, 0) / 60:.1f} minutes of the budget left")
