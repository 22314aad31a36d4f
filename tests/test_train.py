"""Training loop: the paper's schedule and its scaling, a real CPU run, and kill/resume bit-identity."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ranlib.errors import ConfigError, DataNotFoundError, ResultsExistError, UnknownNameError
from ranlib.training import evaluation, loop, provenance, recipes, splits
from ranlib.training.config import IDENTITY_FIELDS, IDENTITY_SUFFIX, TrainConfig, resolve
from ranlib.training.results import load_results
from ranlib.training.runtime import Dist, native_bf16, resolve_precision

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = "cifar_attention56"


def make_folder_dataset(root, n_train: int = 32, n_test: int = 16, classes: int = 3, size: int = 32,
                        seed: int = 0) -> Path:
    """A tiny `folder` dataset of random PNGs with a colour cue per class (so training can learn)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = i % classes
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image[..., label] = 255 - image[..., label] // 4
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def subprocess_env() -> dict:
    """One thread per process (2 shared cores) and ranlib importable from the checkout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def tiny_config(tmp_path: Path, data_root: Path, **overrides) -> TrainConfig:
    values = dict(model=TINY_MODEL, dataset="folder", data_root=str(data_root), profile="smoke", batch_size=4,
                  iterations=4, eval_every=2, checkpoint_every=2, device="cpu", experiment="unit",
                  results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                  progress=False)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "tiny")


@contextlib.contextmanager
def single_thread():
    """One intra-op thread: the 2 shared cores are faster without oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


# --- schedule -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, command", [("ranlib.bench.__main__", "python -m ranlib.bench --device cpu"),
                                             ("ranlib.__main__", "python -m ranlib --device cpu")])
def test_the_recorded_command_names_the_module_run_with_dash_m(monkeypatch, module, command):
    import importlib.machinery
    import types
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec(module, None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", [f"/x/{module.replace('.', '/')}.py", "--device", "cpu"])
    assert provenance.command_line() == command


def test_paper_schedule_is_the_default():
    rule = recipes.scaled_schedule(recipes.RECIPES["cifar"], 64)
    assert rule == {"lr": 0.1, "iterations": 160_000, "milestones": [64_000, 96_000], "warmup_iterations": 0}
    config = resolve(TrainConfig(model="cifar_attention92", data_root="unused"))
    assert (config.batch_size, config.lr, config.iterations, config.milestones) == (64, 0.1, 160_000, [64_000, 96_000])
    assert (config.momentum, config.nesterov, config.weight_decay, config.warmup_iterations) == (0.9, True, 1e-4, 0)


def test_large_batch_rule_keeps_epochs_and_scales_lr():
    rule = recipes.scaled_schedule(recipes.RECIPES["cifar"], 512)
    assert rule["lr"] == pytest.approx(0.8)
    assert rule["iterations"] == 20_000 and rule["milestones"] == [8_000, 12_000]
    assert rule["iterations"] * 512 == 160_000 * 64  # same number of epochs
    # 5 epochs of 50,000 images at batch 512
    assert rule["warmup_iterations"] == pytest.approx(5 * 50_000 / 512, abs=1)


def test_quick_profile_is_a_tenth_of_the_scaled_schedule():
    config = resolve(TrainConfig(model="cifar_attention92", profile="quick", data_root="unused"))
    assert config.batch_size == 256 and config.lr == pytest.approx(0.4)
    assert config.iterations == 4_000 and config.milestones == [1_600, 2_400]
    assert "Goyal" in config.schedule_rule and "0.1 of that schedule" in config.schedule_rule
    explicit = resolve(TrainConfig(model="cifar_attention92", profile="quick", lr=0.05, iterations=100,
                                                  data_root="unused"))
    assert explicit.lr == 0.05 and explicit.iterations == 100 and explicit.milestones == [40, 60]
    assert "explicit iterations, lr" in explicit.schedule_rule


def test_imagenet_recipe():
    config = resolve(TrainConfig(model="attention56", dataset="imagenet-folder", data_root="unused"))
    assert (config.batch_size, config.lr, config.weight_decay, config.nesterov) == (256, 0.1, 1e-4, False)
    assert config.iterations == 530_000 and config.milestones == [200_000, 400_000, 500_000]
    assert config.test_size == 224
    assert resolve(TrainConfig(model="attention92", dataset="imagenet-folder",
                                          data_root="unused")).test_size == 320


def test_warmup_then_step_decay():
    factor = recipes.WarmupStepLR([10, 20], decay=0.1, warmup_iterations=4)
    assert [factor(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factor(9) == 1.0 and factor(10) == pytest.approx(0.1) and factor(25) == pytest.approx(0.01)


@pytest.mark.parametrize("overrides, error", [
    (dict(model="no_such_net"), UnknownNameError),
    (dict(dataset="mnist"), UnknownNameError),
    (dict(dataset="imagenet-folder"), ConfigError),
    (dict(noise_level=1.0), ConfigError),
    (dict(noise_level=-0.1), ConfigError),
    (dict(profile="huge"), UnknownNameError),
    (dict(batch_size=6, accum_steps=4), ConfigError),
    (dict(model_kwargs={"colour": "red"}), ConfigError),
    (dict(data_root=None), DataNotFoundError),
    (dict(seed=-1), ConfigError),  # numpy's seed sequence would refuse it mid-run, after folders were made
])
def test_bad_configs_are_refused(overrides, error):
    with pytest.raises(error):
        resolve(TrainConfig(**{"model": TINY_MODEL, "data_root": "unused", **overrides}))


# --- a real run -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("run")
    with single_thread():
        record = loop.run(tiny_config(tmp, data_root, noise_level=0.3, seed=3))
    return tmp, record


def test_run_writes_a_complete_results_file(noisy_run):
    tmp, record = noisy_run
    [loaded] = load_results(tmp / "results" / "unit")
    # its own batch (-b4) and length (the digest)
    assert loaded["run_name"] == record["run_name"] == f"{TINY_MODEL}-folder-noise0.3-smoke-s3-b4-c6812f4"
    assert loaded["final"]["top1_error"] == loaded["curve"][-1]["test_top1_error"]  # final iterate
    assert loaded["final"]["top5_error"] is None  # 3 classes: no top-5
    # the curve once said 0.0 (3 classes; 1.66 % on CIFAR-10) where the final said null
    assert [p["test_top5_error"] for p in loaded["curve"]] == [None] * len(loaded["curve"])
    assert [p["iteration"] for p in loaded["curve"]] == [2, 4]
    assert loaded["dataset"]["num_train"] == 32 and loaded["dataset"]["fingerprint"]
    assert loaded["final"]["num_test"] == loaded["curve"][-1]["test_count"] == 16  # the count evaluated
    assert loaded["noise"]["level"] == 0.3 and loaded["noise"]["seed"] == 3
    assert 0 < loaded["noise"]["achieved_rate"] < 1
    assert len(loaded["analysis"]["stage_response"]) == 3
    assert all(r > 0 for r in loaded["analysis"]["stage_response"])
    assert loaded["model"]["params"] > 1e5 and loaded["model"]["macs"] > 1e7
    prov = loaded["provenance"]
    assert prov["device_type"] == "cpu" and prov["seed"] == 3
    assert prov["precision"] == ("bf16" if native_bf16() else "fp32") == loaded["config"]["precision"]  # "auto"
    assert prov["torch"] == torch.__version__ and prov["started_at"] <= prov["finished_at"]
    assert len(prov["git_commit"]) == 40 and isinstance(prov["git_dirty"], bool)
    assert loaded["cost"]["images_per_s"] > 0 and loaded["cost"]["peak_memory_bytes"] > 0
    assert loaded["config"]["schedule_rule"] and loaded["config"]["batch_rule"] == "explicit"


def test_metrics_jsonl_and_lr_schedule(noisy_run):
    tmp, record = noisy_run
    lines = [json.loads(line) for line in
             (tmp / "checkpoints" / "unit" / record["run_name"] / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["event"] == "train"]
    # milestones at 40% and 60% of 4 iterations: iterations 2 and 2 -> lr/100 from iteration 3 on
    assert record["config"]["milestones"] == [2, 2]
    assert [line["lr"] for line in train_lines] == pytest.approx([0.00625, 0.00625, 6.25e-5, 6.25e-5])
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "final"


def test_a_finished_run_is_never_overwritten(noisy_run, data_root):
    tmp, _ = noisy_run
    with pytest.raises(ResultsExistError, match="is finished: its results file .* already exists and is kept") as info:
        loop.run(tiny_config(tmp, data_root, noise_level=0.3, seed=3))
    assert "--overwrite" not in str(info.value)  # never advise the flag that would destroy it


def test_top5_is_reported_from_100_classes_and_then_in_curve_and_final_alike():
    torch.manual_seed(0)
    x, y = torch.randn(40, 8), torch.randint(0, 10, (40,))
    for classes, reported in ((10, False), (100, True)):
        [result] = evaluation.evaluate_members(torch.nn.Linear(8, classes), [(x, y)], torch.device("cpu"), "fp32")
        assert (result["top5_error"] is not None) == reported == (classes >= evaluation.TOP5_MIN_CLASSES)
        if reported:
            assert 0 <= result["top5_error"] <= result["top1_error"]


# --- run identity ----------------------------------------------------------------

def test_trainings_that_differ_never_share_a_name(tmp_path, data_root, one_thread):
    """Runs that differ in lr, batch size or iterations once shared the default name: one's results
    ended up beside the other's checkpoint and the second's results were lost."""
    variants = {"base": {}, "lr": {"lr": 0.05}, "batch": {"batch_size": 2}, "iterations": {"iterations": 2}}
    records = {key: loop.run(tiny_config(tmp_path, data_root, **change)) for key, change in variants.items()}
    names = {key: record["run_name"] for key, record in records.items()}
    assert len(set(names.values())) == len(variants), names
    assert names["batch"].endswith("-b2-c6812f4") and "-b2" not in names["lr"]  # -bB for a batch of its own
    for key, record in records.items():
        run_dir = tmp_path / "checkpoints" / "unit" / record["run_name"]
        saved = torch.load(run_dir / "last.pt", weights_only=False)["config"]
        assert saved == record["config"] and saved["run_name"] == names[key]  # each checkpoint beside its own results
    assert len(load_results(tmp_path / "results" / "unit")) == len(variants)


def test_the_name_shows_the_batch_and_a_digest_of_what_differs():
    def name(**fields):
        fields = {"model": "cifar_attention92", "data_root": "d", "profile": "quick", "device": "cpu", **fields}
        return resolve(TrainConfig(**fields)).run_name

    plain = "cifar_attention92-cifar10-quick-s0"
    assert name() == name(batch_size=256) == name(lr=0.4) == name(iterations=4000) == plain  # the defaults
    assert name(batch_size=128) == name(batch_size=128, lr=0.2) == plain + "-b128"  # the rule at batch 128
    digests = {name(**{field: value}) for field, value in [("lr", 0.5), ("iterations", 10), ("max_test_samples", 10),
                                                           ("weight_decay", 5e-4), ("momentum", 0.8),
                                                           ("nesterov", False), ("accum_steps", 2),
                                                           ("milestones", [5]), ("train_size", 28)]}
    assert len(digests) == 9 and all(IDENTITY_SUFFIX.search(n).group(2) for n in digests)
    # provenance, not identity: how often it logs or checkpoints, where it writes, how it computes
    assert name(eval_every=7, checkpoint_every=9, results_dir="x", channels_last=True, compile=True) == plain
    assert name(precision="auto") == name(precision=resolve_precision("auto", torch.device("cpu"))) == plain
    assert name(precision="bf16" if name(precision="fp32") == plain else "fp32") != plain
    assert name(profile="full") == "cifar_attention92-cifar10-full-s0-b512"  # full always shows its batch


def test_every_training_field_is_either_named_or_provenance():
    named = {"model", "model_kwargs", "dataset", "noise_level", "profile", "seed", "batch_size", "precision"}
    provenance = {"experiment", "run_name", "data_root", "download", "results_dir", "checkpoint_dir", "device",
                  "channels_last", "compile", "compile_mode", "grad_checkpointing", "cuda_graphs", "conv_autotune",
                  "deterministic", "resume", "overwrite", "eval_every", "checkpoint_every", "log_every",
                  "num_workers", "progress", "schedule_rule", "batch_rule"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert named | provenance | set(IDENTITY_FIELDS) == fields  # a new field must be sorted into one
    assert not (named | provenance) & set(IDENTITY_FIELDS)


def test_a_run_folder_is_locked_while_it_trains(tmp_path, data_root):
    """Two identical runs at once used to interleave one metrics.jsonl."""
    from ranlib.errors import RunLockedError
    from ranlib.files import FolderLock

    config = tiny_config(tmp_path, data_root)
    run_dir = tmp_path / "checkpoints" / "unit" / resolve(config).run_name
    with FolderLock(run_dir, "the other process's run"):  # as a second process holding it would
        with pytest.raises(RunLockedError, match=rf"is being trained by pid {os.getpid()} .*another --run-name"):
            loop.run(config)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written, no metrics.jsonl
    loop.run(config)  # released: the run trains
    assert (run_dir / "last.pt").is_file()


def test_the_lock_holds_across_processes(tmp_path):
    from ranlib.errors import RunLockedError
    from ranlib.files import FolderLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ranlib.files import FolderLock\n"
                               f"with FolderLock({str(tmp_path)!r}, 'x'):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with FolderLock(tmp_path, "run unit/x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path, "run unit/x"):  # the kernel dropped the lock of the killed process
        pass


# --- checked before the work --------------------------------------------------------

def test_a_folder_that_cannot_be_written_is_found_before_training(tmp_path, data_root):
    from ranlib.errors import StorageError

    (tmp_path / "a-file").write_text("not a folder")
    for folder, flag in (("results_dir", "--results-dir"), ("checkpoint_dir", "--checkpoint-dir")):
        with pytest.raises(StorageError, match=f"cannot write in .*a-file.*choose another {flag}"):
            loop.run(tiny_config(tmp_path, data_root, **{folder: str(tmp_path / "a-file" / "x")}))
    assert not list(tmp_path.rglob("metrics.jsonl"))  # found before the first iteration


def test_too_little_space_for_an_atomic_checkpoint_is_found_before_training(tmp_path, data_root, monkeypatch):
    import shutil

    from ranlib.errors import StorageError

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    with pytest.raises(StorageError, match="has 1 MiB free but writing the checkpoint atomically needs about"):
        loop.run(tiny_config(tmp_path, data_root))
    assert not list(tmp_path.rglob("metrics.jsonl")) and not list(tmp_path.rglob("last.pt"))


def test_a_results_folder_that_fails_at_the_end_keeps_the_run(tmp_path, data_root, monkeypatch, one_thread):
    """A read-only --results-dir found after the whole training was a traceback, and nothing said
    how to recover the run."""
    from ranlib.errors import StorageError

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    config = tiny_config(tmp_path, data_root)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "write_results", read_only)
        with pytest.raises(StorageError, match="is trained, but its results file .* could not be written "
                                               r"\(Permission denied\); its record is kept at .*--resume"):
            loop.run(config)
    run_dir = tmp_path / "checkpoints" / "unit" / resolve(config).run_name
    kept = json.loads((run_dir / "results.json").read_text())
    record = loop.run(dataclasses.replace(config, resume=True))  # the folder fixed: the same command, --resume
    assert record["final"] == kept["final"] and record["curve"] == kept["curve"]
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("train") == 4 and events[-2:] == ["resume", "final"]  # nothing trained again
    assert not (run_dir / "results.json").exists() and load_results(tmp_path / "results")


def test_a_results_file_that_appears_during_training_is_kept_and_so_is_the_run(tmp_path, data_root, monkeypatch,
                                                                               one_thread):
    """A run of the same name with another --checkpoint-dir is not locked out (another folder): the
    second to finish used to lose its results; now both are kept."""
    from ranlib.errors import StorageError

    config = tiny_config(tmp_path, data_root)
    theirs = tmp_path / "results" / "unit" / f"{resolve(config).run_name}.json"
    trained = loop._GroupTraining.train

    def train_while_the_other_finishes(self):
        trained(self)
        theirs.parent.mkdir(parents=True, exist_ok=True)
        theirs.write_text('{"the other run": 1}')

    monkeypatch.setattr(loop._GroupTraining, "train", train_while_the_other_finishes)
    with pytest.raises(StorageError, match="appeared while this run trained"):
        loop.run(config)
    assert theirs.read_text() == '{"the other run": 1}'
    kept = tmp_path / "checkpoints" / "unit" / theirs.stem / "results.json"
    assert load_results(kept)[0]["run_name"] == theirs.stem


# --- kill -9 and resume ---------------------------------------------------------------------------------

def _train_cmd(tmp: Path, data_root: Path, run_name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ranlib", "train", "--model", TINY_MODEL, "--dataset", "folder",
            "--data-root", str(data_root), "--profile", "smoke", "--batch-size", "4", "--iterations", "8",
            "--eval-every", "4", "--checkpoint-every", "2", "--max-train-samples", "24", "--max-test-samples", "8",
            "--device", "cpu", "--no-progress", "--experiment", "resume", "--run-name", run_name,
            "--results-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "checkpoints"), *extra]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, data_root):
    env = subprocess_env()
    # The uninterrupted reference and the run to be killed start together (two cores).
    reference = subprocess.Popen(_train_cmd(tmp_path, data_root, "reference"), env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "checkpoints" / "resume" / "interrupted" / "last.pt"
    victim = subprocess.Popen(_train_cmd(tmp_path, data_root, "interrupted"), env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed: " + victim.stderr.read()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    killed_at = torch.load(checkpoint, weights_only=False)["iteration"]
    assert 0 < killed_at < 8
    assert not (tmp_path / "results" / "resume" / "interrupted.json").exists()

    resumed = subprocess.run(_train_cmd(tmp_path, data_root, "interrupted", "--resume"), env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err

    final_ref = torch.load(tmp_path / "checkpoints" / "resume" / "reference" / "last.pt", weights_only=False)
    final_res = torch.load(checkpoint, weights_only=False)
    assert final_res["iteration"] == final_ref["iteration"] == 8
    assert final_ref["model"].keys() == final_res["model"].keys()
    for name, tensor in final_ref["model"].items():
        assert torch.equal(tensor, final_res["model"][name]), f"{name} differs after resume from {killed_at}"
    for a, b in zip(final_ref["optimizer"]["state"].values(), final_res["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    ref_record, res_record = (json.loads((tmp_path / "results" / "resume" / f"{n}.json").read_text())
                              for n in ("reference", "interrupted"))
    assert ref_record["curve"] == res_record["curve"]
    assert res_record["provenance"]["resumed"] is True
    iterations = [json.loads(line)["iteration"] for line in
                  (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "train"]
    assert iterations == list(range(1, 9))  # the killed run's unsaved lines were trimmed


def test_resume_refuses_a_different_configuration(tmp_path, data_root, one_thread):
    config = tiny_config(tmp_path, data_root, iterations=2, run_name="changed")
    loop.run(config)
    (tmp_path / "results" / "unit" / "changed.json").unlink()  # as if it had been killed
    from ranlib.errors import CheckpointError
    with pytest.raises(CheckpointError, match="lr"):
        loop.run(tiny_config(tmp_path, data_root, iterations=2, run_name="changed", resume=True, lr=0.5))
    with pytest.raises(ResultsExistError, match="--resume"):
        loop.run(tiny_config(tmp_path, data_root, iterations=2, run_name="changed"))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path, data_root):
    env = subprocess_env()
    cmd = _train_cmd(tmp_path, data_root, "terminated") + ["--checkpoint-every", "100", "--log-every", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "checkpoints" / "resume" / "terminated" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and (
            not metrics.exists() or '"event": "train"' not in metrics.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1].startswith("ranlib: error: stopped by signal 15 at iteration")
    assert "--resume" in err
    saved = torch.load(metrics.parent / "last.pt", weights_only=False)
    assert 1 <= saved["iteration"] < 8  # written by the signal (checkpoint_every is 100)
    resumed = subprocess.run(cmd + ["--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(metrics.parent / "last.pt", weights_only=False)["iteration"] == 8


# --- the ImageNet path ----------------------------------------------------------------------------------

def test_loader_stream_is_seeded_per_epoch_and_resumes_mid_epoch():
    dataset = torch.utils.data.TensorDataset(torch.arange(10), torch.arange(10))

    def stream(rank=0, world_size=1):
        sampler = splits.EpochSampler(len(dataset), seed=5, rank=rank, world_size=world_size)
        loader = splits._loader(dataset, 3 // world_size or 1, workers=0, sampler=sampler, drop_last=True)
        return splits._LoaderStream(loader, seed=5, device=torch.device("cpu"), channels_last=False)

    first = stream()
    iterator = iter(first)
    batches, states = [], []
    for _ in range(7):  # 3 batches per epoch: crosses two epoch boundaries
        batches.append(next(iterator)[0])
        states.append(first.state_dict())
    assert states[2] == {"epoch": 0, "position": 3} and states[3] == {"epoch": 1, "position": 1}
    assert not torch.equal(torch.cat(batches[0:3]), torch.cat(batches[3:6]))  # each epoch reshuffled
    assert torch.equal(next(iter(stream()))[0], batches[0])  # the order depends on (seed, epoch) only
    second = stream()
    second.load_state_dict(states[3])  # after the first batch of epoch 1
    rest = iter(second)
    assert all(torch.equal(next(rest)[0], b) for b in batches[4:7])
    # Two processes (batch 1 each) split each epoch's permutation into disjoint halves.
    shares = [torch.cat([x for x, _ in itertools.islice(iter(stream(r, 2)), 5)]).tolist() for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(10))


def _write_imagenet_folder(root: Path, n_train: int, n_val: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            folder = root / split / f"n0{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


@pytest.mark.parametrize("dataset", ["folder", "imagenet-folder"])
def test_every_evaluation_sees_the_whole_test_set_after_a_partial_pass(dataset, data_root, tmp_path, one_thread):
    if dataset == "imagenet-folder":
        data_root = _write_imagenet_folder(tmp_path / "inet", 2, 7)
    c = tiny_config(tmp_path, data_root, dataset=dataset, train_size=32, test_size=32, num_workers=0)
    split = splits.load_split([c], torch.device("cpu"), 32, Dist(), train=False, eval_batch_size=5)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    next(iter(split.test))  # a partial pass: the first batch only
    evaluated = [evaluation.evaluate(model, split.test, torch.device("cpu"), "fp32")["count"] for _ in range(2)]
    assert evaluated == [split.info["num_test"]] * 2 == [16 if dataset == "folder" else 7] * 2


def test_imagenet_folder_smoke_run(tmp_path, one_thread):
    root = _write_imagenet_folder(tmp_path / "inet", 4, 2)
    record = loop.run(TrainConfig(
        model="attention56", dataset="imagenet-folder", data_root=str(root), profile="smoke", batch_size=2,
        iterations=1, train_size=64, test_size=64, num_workers=0, device="cpu", progress=False,
        results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints")))
    assert record["dataset"]["id"] == "imagenet-folder:inet" and record["dataset"]["num_test"] == 2
    assert record["final"]["num_test"] == 2
    assert record["config"]["train_size"] == 64 and record["config"]["nesterov"] is False
    assert record["final"]["top5_error"] is None  # 2 classes
    assert len(record["analysis"]["stage_response"]) == 4  # three attention stages and the last 2048-wide one
