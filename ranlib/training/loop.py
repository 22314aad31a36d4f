"""The training loop: one loop trains every experiment, one run or a fused group of runs at a time.

This module trains resolved configurations (:func:`run`, :func:`run_group`): it locks each run's
folder, loads the data, builds and fuses the members' models, resumes from their checkpoints,
steps, logs, evaluates and checkpoints on schedule, stops cleanly on SIGTERM/SIGINT
(:class:`TrainingInterrupted`), and writes each member's final checkpoint, record and results file.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m ranlib train ...``. ``batch_size`` is the
global batch; every process draws the same global batch (same seed) and trains on its 1/N slice,
so the data are those of a one-process run. Batch norm: by default each process normalises with
its own slice's statistics (as Caffe's multi-GPU training and Goyal et al. do) and the running
statistics are averaged over processes after every step; ``accum_steps`` gives exactly this
computation on one device (one micro-batch per simulated process). ``sync_bn=True`` (CUDA only)
normalises over the global batch instead, i.e. the same model as one process at that batch.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ranlib.errors import CheckpointError, ConfigError, DataFormatError, RanlibError, ResultsExistError, StorageError
from ranlib.files import FolderLock, check_free_space, check_writable
from ranlib.models.fused import (FusedConv2d, choose_conv_impls, fuse, fuse_inputs, fused_optimizer_state,
                                 member_optimizer_state, member_state_dict)

from . import checkpoint as ckpt
from . import provenance
from .config import RESUMABLE_CHANGES, TrainConfig, check_group, resolve
from .evaluation import build_model, evaluate_members
from .recipes import WarmupStepLR, model_info
from .results import SCHEMA_VERSION, results_path, write_record, write_results
from .runtime import (Dist, algorithms, all_reduce, autocast, average_bn_running_stats, cuda_time_s, init_distributed,
                      peak_memory_bytes, resolve_precision, seed_everything, select_device, synchronize)
from .splits import load_split
from .step import TrainStep


class TrainingInterrupted(RanlibError):
    """SIGTERM/SIGINT arrived: a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Recompute every attention module's mask branch in backward (``ResidualNet.set_grad_checkpointing``).

    Only attention networks have mask branches: for any other model (plain ResNets, the
    torchvision baselines) turning it on would silently do nothing, so it is refused.
    """
    if not (hasattr(model, "set_grad_checkpointing") and any(hasattr(m, "checkpoint_mask") for m in model.modules())):
        raise ConfigError(f"model {name} has no attention mask branch to checkpoint; leave grad checkpointing off")
    model.set_grad_checkpointing(True)


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _MetricsLog:
    """metrics.jsonl beside the checkpoint: one JSON object per line, trimmed on resume."""

    def __init__(self, path: Path, keep_until: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("iteration", 0) <= keep_until:
                        kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _check_resumable(saved: dict, c: TrainConfig, path: Path) -> None:
    # A field added to TrainConfig since the checkpoint was written had its default value then.
    old, new = TrainConfig().to_dict() | saved.get("config", {}), c.to_dict()
    differ = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if differ:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ[:4])
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({detail}); "
                              "resume with the original settings or pass --overwrite to start over")


@dataclass
class _Member:
    """One run of a group: its configuration, files, resumed state and learning curve."""

    config: TrainConfig
    out_path: Path
    run_dir: Path
    saved: dict | None = None
    curve: list = field(default_factory=list)
    spent: dict = field(default_factory=lambda: {"train_time_s": 0.0, "wall_time_s": 0.0, "images": 0,
                                                  "device_s": 0.0})
    metrics: _MetricsLog | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / ckpt.CHECKPOINT_NAME

    @classmethod
    def open(cls, c: TrainConfig, d: Dist, locks: contextlib.ExitStack) -> "_Member":
        """Lock the run's folder (main process; released by ``locks``), then check its files: results
        not yet written, and a checkpoint only when resuming."""
        member = cls(c, results_path(c.results_dir, c.experiment, c.run_name),
                     Path(c.checkpoint_dir) / c.experiment / c.run_name)
        if d.main:  # two processes never train one run at once (nor interleave its metrics.jsonl)
            locks.enter_context(FolderLock(member.run_dir, f"run {c.experiment}/{c.run_name}"))
        if member.out_path.exists() and not c.overwrite:
            raise ResultsExistError(f"run {c.experiment}/{c.run_name} is finished: its results file {member.out_path} "
                                    "already exists and is kept; give a new training another --run-name "
                                    f"(its model is {member.ckpt_path}, for `ranlib eval --checkpoint`)")
        if c.resume and member.ckpt_path.exists():
            member.saved = ckpt.load_checkpoint(member.ckpt_path, map_location="cpu")
            _check_resumable(member.saved, c, member.ckpt_path)
            member.curve = member.saved["curve"]
            member.spent = {"device_s": member.saved["spent"]["wall_time_s"] * d.world_size,
                            **member.saved["spent"]}
        elif member.ckpt_path.exists() and not c.overwrite:
            raise ResultsExistError(f"a checkpoint of run {c.run_name!r} exists at {member.ckpt_path}; pass --resume "
                                    "to continue it or --overwrite to start over")
        elif c.resume and d.main:
            print(f"ranlib: no checkpoint at {member.ckpt_path}; starting run {c.run_name} from iteration 0",
                  file=sys.stderr)
        return member

    @property
    def start_iteration(self) -> int:
        return self.saved["iteration"] if self.saved else 0


def _resume_point(members: Sequence[_Member]) -> int:
    """The iteration every member resumes from (they train in lockstep, so it must be one)."""
    points = {m.config.run_name: m.start_iteration for m in members}
    if len(set(points.values())) > 1:
        detail = ", ".join(f"{name} at {it}" for name, it in points.items())
        raise CheckpointError(f"members of a fused group resume together, but their checkpoints are at different "
                              f"iterations ({detail}); resume each alone, or pass --overwrite to start them over")
    return next(iter(points.values()))


def _settle_runtime(c: TrainConfig, device: torch.device, d: Dist) -> None:
    """Fill the device-dependent settings (determinism, convolution timing, CUDA graphs) and check them."""
    c.precision = resolve_precision(c.precision, device)  # resolve() did, for the device type it expected
    if c.deterministic is None:
        c.deterministic = device.type == "cpu"
    if c.batch_size % (d.world_size * c.accum_steps):
        raise ConfigError(f"global batch {c.batch_size} must divide by processes x accum_steps "
                          f"({d.world_size} x {c.accum_steps})")
    if c.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); leave it off on CPU")
    if c.conv_autotune is None:
        c.conv_autotune = device.type == "cuda"
    elif c.conv_autotune and device.type != "cuda":
        raise ConfigError("--conv-autotune times convolutions with CUDA events; it needs a CUDA device")
    graphs_possible = device.type == "cuda" and not c.compile and not d.enabled and c.accum_steps == 1
    if c.cuda_graphs is None:
        c.cuda_graphs = graphs_possible
    elif c.cuda_graphs and not graphs_possible:
        raise ConfigError("--cuda-graphs needs a CUDA device, one process, accum_steps 1 and no --compile "
                          "(torch.compile's reduce-overhead mode captures graphs itself); drop one of them")


def _configure_backends(c: TrainConfig, device: torch.device) -> None:
    torch.use_deterministic_algorithms(c.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not c.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)


def run(config: TrainConfig) -> dict:
    """Train one run, evaluate the final iterate, write the results file (main process) and return
    the record: :func:`run_group` with one member."""
    return run_group([config])[0]


def run_group(configs: Sequence[TrainConfig]) -> list[dict]:
    """Train K >= 1 runs as one fused model (:mod:`ranlib.models.fused`) and return their records.

    Each member is built, fed and checkpointed exactly as its solo run would be (own seed,
    initialisation, data order, augmentation and labels), writes its own checkpoint, metrics and
    results file, and can be resumed or evaluated alone. Raises :class:`ConfigError` when the
    members may not share a group (:func:`check_group`) and :class:`TrainingInterrupted` after a
    SIGTERM/SIGINT (checkpoints written).
    """
    if not configs:
        raise ConfigError("a group needs at least one run")
    started_at = provenance.utc_now()
    d = init_distributed(configs[0].device)
    with algorithms(torch.are_deterministic_algorithms_enabled()):  # torch's settings come back on exit
        try:
            return _train_group(configs, d, started_at)
        finally:
            if d.enabled:
                torch.distributed.destroy_process_group()


def _train_group(configs: Sequence[TrainConfig], d: Dist, started_at: str) -> list[dict]:
    with contextlib.ExitStack() as locks:  # the members' run folders, locked until the group ends
        training = _GroupTraining(configs, d, started_at, locks)  # check, open files, load data, build, resume
        training.train()  # steps, with logs, evaluations and checkpoints; a signal checkpoints and stops
        return training.finish()  # the final checkpoints, records and results files


class _GroupTraining:
    """The training of a group of K >= 1 members, as named steps (see :func:`run_group`)."""

    def __init__(self, configs: Sequence[TrainConfig], d: Dist, started_at: str, locks: contextlib.ExitStack):
        self.wall_start, self.d, self.started_at = time.perf_counter(), d, started_at
        resolved = [resolve(c) for c in configs]
        self.device = select_device(resolved[0].device, d)
        for c in resolved:
            _settle_runtime(c, self.device, d)
        check_group(resolved)
        self.members = [_Member.open(c, d, locks) for c in resolved]
        if d.main:  # a folder that cannot be written is found now, not after the training
            for m in self.members:
                check_writable(m.out_path.parent, "make it writable or choose another --results-dir")
                check_writable(m.run_dir, "make it writable or choose another --checkpoint-dir")
        self.iteration = _resume_point(self.members)
        self.c, self.k = resolved[0], len(self.members)  # the settings the group shares, and its size
        self.info = model_info(self.c.model)
        _configure_backends(self.c, self.device)
        seed_everything(self.c.seed)
        self.split = self._load_data(resolved)
        self._build()
        if d.main:  # an atomic checkpoint write holds the old file and the new one at once
            sizes = sum(t.numel() * t.element_size() for t in self.reference_state.values() if torch.is_tensor(t))
            check_free_space(self.members[0].run_dir, 2 * 2 * sizes * self.k,  # weights and momentum, twice
                             f"writing {'the checkpoint' if self.k == 1 else f'{self.k} checkpoints'} atomically",
                             "free some space or choose another --checkpoint-dir")
        if self.iteration:
            self._resume()
        self.step = TrainStep(self.step_model, self.raw_model, self.optimizer, windows=self.windows,
                              precision=self.c.precision, accum_steps=self.c.accum_steps, ddp=d.enabled,
                              cuda_graphs=self.c.cuda_graphs)
        self.group_names = [m.config.run_name for m in self.members]
        for m in self.members:
            m.metrics = _MetricsLog(m.run_dir / "metrics.jsonl", keep_until=self.iteration if m.saved else None,
                                    enabled=d.main)
            m.metrics.write({"event": "resume" if m.saved else "start", "iteration": self.iteration,
                             "config": m.config.to_dict(), "group": self.group_names})
        self.clock = {"train_time_s": 0.0, "images": 0}  # this sitting's share, added to each member's spent

    def _load_data(self, resolved: Sequence[TrainConfig]):
        split = load_split(resolved, self.device, self.info.input_size, self.d)
        for m in self.members:
            saved = (m.saved or {}).get("dataset", {}).get("fingerprint", split.info["fingerprint"])
            if saved != split.info["fingerprint"]:
                raise CheckpointError(f"checkpoint {m.ckpt_path} was trained on data with fingerprint {saved}, not "
                                      f"{split.info['fingerprint']}; point --data-root at the original data")
        return split

    def _build(self) -> None:
        """Each member's model as its solo run builds it, fused into one; optimizer and schedule."""
        c, d = self.c, self.d
        solo = [_member_model(m, self.split.num_classes) for m in self.members]
        self.complexity = _complexity(solo[0], c.train_size)
        self.reference_state = solo[0].state_dict()  # the keys and dtypes a member's state dict has
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        model = fuse(solo).to(self.device, memory_format=memory_format)
        self.conv_impls = self._choose_conv_impls(model) if c.conv_autotune else None
        if c.sync_bn and d.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                         weight_decay=c.weight_decay, fused=c.cuda_graphs or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupStepLR(c.milestones, c.lr_decay, c.warmup_iterations))
        self.windows = [torch.zeros(self.k, 3, dtype=torch.float64, device=self.device) for _ in range(2)]
        self.raw_model = model  # what checkpoints and analysis see (no DDP/compile wrappers)
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None, forward_sync_buffers=False)  # BN stats: averaged per step
        self.model = model
        self.step_model = torch.compile(model, mode=c.compile_mode) if c.compile else model

    def _choose_conv_impls(self, model: nn.Module) -> dict | None:
        """Each fused convolution's fastest implementation, timed at its shape (a grouped convolution, a
        batched matrix product for 1x1, or a dense block-diagonal one): the same model either way."""
        c = self.c
        x = torch.randn(c.batch_size // self.d.world_size, 3 * self.k, c.train_size, c.train_size,
                        device=self.device).contiguous(memory_format=torch.channels_last if c.channels_last
                                                       else torch.contiguous_format)
        try:
            with autocast(self.device, c.precision):
                return choose_conv_impls(model, x, cuda_time_s)
        except RuntimeError as err:  # e.g. out of memory: the grouped convolutions stay
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"ranlib: timing the convolutions failed ({first}); they stay grouped", stacklevel=2)
            for layer in model.modules():
                if isinstance(layer, FusedConv2d):
                    layer.impl = "grouped"
            return None

    def _resume(self) -> None:
        """The optimizer, schedule, data positions, random state and metric windows of the checkpoints."""
        saved = [m.saved for m in self.members]
        self.optimizer.load_state_dict(fused_optimizer_state([s["optimizer"] for s in saved]))
        for group in self.optimizer.param_groups:  # the saved flags belong to the device that wrote them
            group["fused"], group["foreach"] = self.c.cuda_graphs or None, None
        self.scheduler.load_state_dict(saved[0]["scheduler"])
        for s, stream in zip(saved, self.split.train):
            stream.load_state_dict(s["data"])
        ckpt.set_rng_state(saved[0]["rng"])
        for i, window in enumerate(self.windows):
            window.copy_(torch.tensor([s["windows"][i] for s in saved], dtype=torch.float64))

    def train(self) -> None:
        c = self.c
        show_bar = self.d.main and (c.progress if c.progress is not None else sys.stderr.isatty())
        self.bar = _progress(show_bar, self.iteration, c.iterations,
                             c.run_name if self.k == 1 else f"{self.k} fused runs")
        streams = [iter(stream) for stream in self.split.train]
        self.model.train()
        with _StopFlag() as stop, self._checkpoint_if_data_fail():
            self.tick = time.perf_counter()
            while self.iteration < c.iterations:
                lr = self._step(streams)
                boundary = self.iteration % c.log_every == 0 or self.iteration == c.iterations
                if boundary:
                    self._log(lr)
                if self.iteration % c.eval_every == 0 or self.iteration == c.iterations:
                    self._evaluate(lr)
                self._stop_if_signalled(stop.signum, boundary)
                if self.iteration % c.checkpoint_every == 0 and self.iteration < c.iterations:
                    self._checkpoint()
        self.bar.close()

    @contextlib.contextmanager
    def _checkpoint_if_data_fail(self):
        """An image that fails to decode mid-run (ImageNet-style folders decode as they train): a
        checkpoint of the steps done, and one line naming the file."""
        try:
            yield
        except DataFormatError as exc:
            # From a DataLoader worker the message carries the worker's traceback: keep ranlib's line.
            line = str(exc).strip().splitlines()[-1].split("DataFormatError: ", 1)[-1]
            self.save()
            self.bar.close()
            raise DataFormatError(f"{line} (at iteration {self.iteration} of {self.c.iterations}; checkpoint saved to "
                                  f"{self.members[0].ckpt_path}); with the file replaced the data differ from this "
                                  "run's, so start it again with --overwrite") from None

    def _step(self, streams: list) -> float:
        """One optimizer step of every member on its own next batch; returns the step's lr."""
        xs, ys = zip(*(next(stream) for stream in streams))
        x, y = fuse_inputs(xs), torch.stack(ys, dim=1)
        if not self.split.sharded:  # every process drew the same global batch: keep this process's slice
            x, y = x.tensor_split(self.d.world_size)[self.d.rank], y.tensor_split(self.d.world_size)[self.d.rank]
        lr = self.optimizer.param_groups[0]["lr"]
        self.step(x, y)
        self.scheduler.step()
        if not self.c.sync_bn:
            average_bn_running_stats(self.raw_model, self.d)
        self.iteration += 1
        self.clock["images"] += self.c.batch_size
        self.bar.update(1)
        return lr

    def _epoch(self) -> float:
        return self.iteration * self.c.batch_size / self.split.info["num_train"]

    def _log(self, lr: float) -> None:
        """A metrics line per member (training loss and error since the last line) and the bar."""
        log_window = self.windows[1]
        sums = all_reduce(log_window.clone(), self.d).tolist()
        log_window.zero_()
        now = time.perf_counter()
        self.clock["train_time_s"] += now - self.tick
        self.tick = now
        rate = self.clock["images"] / max(self.clock["train_time_s"], 1e-9)
        self.bar.set_postfix(loss=f"{sums[0][0] / max(sums[0][2], 1):.3f}", img_s=f"{rate * self.k:.0f}",
                             lr=f"{lr:.3g}")
        for m, (loss_sum, correct, count) in zip(self.members, sums):
            m.metrics.write({"event": "train", "iteration": self.iteration, "epoch": self._epoch(), "lr": lr,
                             "train_loss": loss_sum / max(count, 1),
                             "train_top1_error": 100.0 * (1 - correct / max(count, 1)), "images_per_s": rate,
                             "process_cpu_s": time.process_time()})  # beside wall time: a shared CPU's share

    def _evaluate(self, lr: float) -> None:
        """A learning-curve point per member: training figures since the last point, the test set now."""
        window = self.windows[0]
        sums = all_reduce(window.clone(), self.d).tolist()  # waits for the device
        window.zero_()
        self.clock["train_time_s"] += time.perf_counter() - self.tick
        model = self.raw_model if self.d.enabled else self.step_model
        tests = evaluate_members(model, self.split.test, self.device, self.c.precision, self.d, members=self.k)
        for m, (loss_sum, correct, count), test in zip(self.members, sums, tests):
            point = {"iteration": self.iteration, "epoch": self._epoch(), "lr": lr,
                     "train_loss": loss_sum / max(count, 1), "train_top1_error": 100.0 * (1 - correct / max(count, 1)),
                     "test_top1_error": test["top1_error"], "test_top5_error": test["top5_error"],
                     "test_loss": test["loss"], "test_count": test["count"]}
            m.curve.append(point)
            m.metrics.write({"event": "eval", **point})
        self.tick = time.perf_counter()

    def _stop_if_signalled(self, signum: int, boundary: bool) -> None:
        """After SIGTERM/SIGINT (in any process): checkpoint every member and raise TrainingInterrupted."""
        stop_now = _agree_to_stop(signum, self.d) if (not self.d.enabled or boundary) else 0
        if not stop_now or self.iteration >= self.c.iterations:
            return
        self.clock["train_time_s"] += time.perf_counter() - self.tick
        self.save()
        self.bar.close()
        for m in self.members:
            m.metrics.write({"event": "interrupted", "iteration": self.iteration, "signal": stop_now})
        first = self.members[0].ckpt_path
        where = first if self.k == 1 else f"{first} and {self.k - 1} more"
        raise TrainingInterrupted(
            f"stopped by signal {stop_now} at iteration {self.iteration}/{self.c.iterations}; checkpoint saved to "
            f"{where}; continue with the same command plus --resume", stop_now)

    def _checkpoint(self) -> None:
        synchronize(self.device)  # queued steps count as training, not as checkpoint time
        t0 = time.perf_counter()
        self.save()
        self.tick += time.perf_counter() - t0  # checkpoint time is not training time

    def _spent(self, m: _Member) -> dict:
        """The member's cost so far: earlier sittings' plus this one's (device time split over the group)."""
        wall = time.perf_counter() - self.wall_start
        return {"train_time_s": m.spent["train_time_s"] + self.clock["train_time_s"],
                "wall_time_s": m.spent["wall_time_s"] + wall, "images": m.spent["images"] + self.clock["images"],
                "device_s": m.spent["device_s"] + wall * self.d.world_size / self.k}

    def save(self) -> None:
        """Every member's checkpoint, as its solo run would write it (the main process only)."""
        if not self.d.main:
            return
        fused_state, optimizer_state = self.raw_model.state_dict(), self.optimizer.state_dict()
        split, k = self.split, self.k
        shared = {"iteration": self.iteration, "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                  "dataset": split.info, "num_classes": split.num_classes, "data_mean": split.mean,
                  "group": self.group_names}
        for i, (m, stream) in enumerate(zip(self.members, split.train)):
            ckpt.save_checkpoint(m.ckpt_path, {
                **shared, "config": m.config.to_dict(),
                "model": member_state_dict(fused_state, i, k, reference=self.reference_state, steps=self.iteration),
                "optimizer": member_optimizer_state(optimizer_state, i, k), "data": stream.state_dict(),
                "curve": m.curve, "noise": split.noise[i], "windows": [w[i].tolist() for w in self.windows],
                "spent": self._spent(m)})

    def finish(self) -> list[dict]:
        """The final checkpoints (for ``ranlib eval``), each member's record and results file."""
        self.save()
        fused_state = self.raw_model.state_dict()
        records = [_final_record(m, i, self.split, fused_state, self.reference_state, self.iteration, self.device,
                                 self.d, self.complexity, self._spent(m), self.started_at, self.group_names,
                                 {"cuda_graphs": self.step.graph is not None,
                                  "conv_impls": self.conv_impls["layers"] if self.conv_impls else None})
                   for i, m in enumerate(self.members)]
        if self.d.main:
            failed = []
            for m, record in zip(self.members, records):
                failed += _write_record(m, record)
                m.metrics.write({"event": "final", "iteration": self.iteration, **record["final"]})
            if failed:
                raise StorageError(f"{failed[0]}" + (f" ({len(failed) - 1} more runs of the group alike)"
                                                     if len(failed) > 1 else ""))
        return records


def _write_record(m: _Member, record: dict) -> list[str]:
    """The member's results file; if it cannot be written, its record beside its checkpoint and a line
    on how to recover (nothing trained is lost: the final checkpoint is complete)."""
    kept = m.run_dir / "results.json"
    try:
        write_results(record, m.config.results_dir, overwrite=m.config.overwrite)
    except (ResultsExistError, OSError) as exc:
        write_record(record, kept)
        why = ("it appeared while this run trained (a run of this name with another --checkpoint-dir?) and is kept"
               if isinstance(exc, ResultsExistError) else getattr(exc, "strerror", None) or str(exc))
        return [f"run {m.config.experiment}/{m.config.run_name} is trained, but its results file {m.out_path} "
                f"could not be written ({why}); its record is kept at {kept}: copy it there, or fix the folder "
                "and run the same command with --resume, which trains nothing more and writes it"]
    kept.unlink(missing_ok=True)  # a record kept by an earlier attempt
    return []


def _member_model(m: _Member, num_classes: int) -> nn.Module:
    """The member's model as its solo run builds it (own seed), with its checkpoint's weights."""
    c = m.config
    model = build_model(c.model, c.model_kwargs, num_classes, c.seed)
    if c.grad_checkpointing:
        enable_grad_checkpointing(model, c.model)
    if m.saved is not None:
        ckpt.load_model_state(model, m.saved["model"], m.ckpt_path)
    return model


def _final_record(m: _Member, index: int, split, fused_state: dict, reference_state: dict, iteration: int,
                  device: torch.device, d: Dist, complexity: dict, spent: dict, started_at: str,
                  group_names: list[str], kernels: dict) -> dict:
    """The member's results record: the final iterate's errors, curve, stage responses, provenance, cost."""
    from ranlib.models.analysis import stage_responses

    c, k = m.config, len(group_names)
    final = m.curve[-1]
    model = build_model(c.model, c.model_kwargs, split.num_classes, c.seed)
    model.load_state_dict(member_state_dict(fused_state, index, k, reference=reference_state, steps=iteration))
    model = model.to(device, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    with torch.no_grad(), autocast(device, c.precision):
        responses = [float(r) for r in stage_responses(model, split.fixed_batch)]
    return {
        "schema": SCHEMA_VERSION,
        "experiment": c.experiment,
        "run_name": c.run_name,
        "config": c.to_dict(),
        "model": {"name": c.model, "kwargs": c.model_kwargs, **complexity,
                  "input_size": c.train_size, "num_classes": split.num_classes},
        "dataset": split.info,
        "noise": split.noise[index],
        "final": {"top1_error": final["test_top1_error"],
                  "top5_error": final["test_top5_error"],  # None below TOP5_MIN_CLASSES, as in the curve
                  "test_loss": final["test_loss"], "iteration": final["iteration"],
                  "num_test": final.get("test_count", split.info["num_test"])},
        "curve": m.curve,
        "analysis": {"stage_response": responses, "stage_response_images": int(len(split.fixed_batch))},
        "provenance": {**provenance.collect(device, precision=c.precision, seed=c.seed, started_at=started_at),
                       "world_size": d.world_size, "resumed": m.saved is not None, **kernels,
                       "group": {"size": k, "members": group_names, "device_share": 1.0 / k}},
        "cost": {"wall_time_s": spent["wall_time_s"], "train_time_s": spent["train_time_s"],
                 "images_per_s": spent["images"] / max(spent["train_time_s"], 1e-9),
                 "group_images_per_s": k * spent["images"] / max(spent["train_time_s"], 1e-9),
                 "peak_memory_bytes": peak_memory_bytes(device),
                 "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
                 "device_hours": spent["device_s"] / 3600.0, "devices": d.world_size},
    }


def _agree_to_stop(signum: int, d: Dist) -> int:
    """The signal any process received (all processes stop at the same iteration)."""
    if not d.enabled:
        return signum
    flag = torch.tensor([signum], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    return int(all_reduce(flag, d).max().item())


def _complexity(model: nn.Module, input_size: int) -> dict:
    import ranlib
    result = ranlib.complexity(model, input_size)
    return {"params": int(result["params"]), "macs": int(result["macs"])}


def _progress(enabled: bool, start: int, total: int, name: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc=name, unit="it", dynamic_ncols=True,
                smoothing=0.05)
