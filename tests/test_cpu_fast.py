"""The CPU's fast path: auto precision and memory format, the measured batch,
the deterministic mode without filled memory, and the bench's CPU figures and bf16 check."""

from __future__ import annotations

import json

import pytest
import torch

from ranlib.bench import cli as bench
from ranlib.bench import cpu as cpu_bench
from ranlib.errors import CheckpointError
from ranlib.study import performance
from ranlib.training import cpu_batch, loop, recipes, runtime
from ranlib.training.config import TrainConfig, resolve
from ranlib.training.step import TrainStep

from test_train import TINY_MODEL, make_folder_dataset, one_thread, tiny_config  # noqa: F401 (fixture)

RATES = {64: 335.0, 128: 366.0, 256: 316.0}  # Attention-56's figures on the project's CPU: 128 is fastest


@pytest.fixture
def cpu_caps(monkeypatch):
    """``cpu_caps(native)``: this CPU has native bf16 or not, as torch.cpu.get_capabilities says."""
    def set_native(native: bool):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native, "avx512_f": True})
    return set_native


@pytest.fixture
def measured(monkeypatch) -> list:
    """Batch timings answer with RATES; the list records every (model, batch, precision, format) timed."""
    calls = []

    def fake(model, *, batch_size, precision, channels_last, **_):
        calls.append((model, batch_size, precision, channels_last))
        return RATES[batch_size]

    monkeypatch.setattr(cpu_batch, "step_images_per_s", fake)
    return calls


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"model": TINY_MODEL, "dataset": "cifar10-jpeg", "data_root": "unused",
                                "profile": "quick", "device": "cpu", **overrides})


# --- precision and memory format ---------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16_and_fp32_elsewhere(cpu_caps, native):
    cpu_caps(native)
    assert runtime.native_bf16() is native
    assert runtime.resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("auto", "cuda") == "bf16"
    assert runtime.resolve_precision("fp32", "cpu") == "fp32" and runtime.resolve_precision("bf16", "cpu") == "bf16"
    c = resolve(TrainConfig(model=TINY_MODEL, data_root="unused", profile="smoke", device="cpu"))
    assert (c.precision, c.channels_last) == ("bf16" if native else "fp32", True)


def test_without_onednn_bf16_is_not_native(cpu_caps, monkeypatch):
    cpu_caps(True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert runtime.resolve_precision("auto", "cpu") == "fp32"


def test_explicit_precision_and_memory_format_win(cpu_caps):
    cpu_caps(True)
    c = resolve(TrainConfig(model=TINY_MODEL, data_root="unused", profile="smoke", device="cpu",
                                        precision="fp32", channels_last=False))
    assert (c.precision, c.channels_last) == ("fp32", False)


def test_a_run_trains_with_the_resolved_settings(tmp_path, cpu_caps, one_thread, monkeypatch):
    cpu_caps(True)
    root = make_folder_dataset(tmp_path / "data", n_train=8, n_test=4)
    seen = []
    original = TrainStep.__call__

    def spy(self, x, y):
        seen.append((self.precision, x.is_contiguous(memory_format=torch.channels_last),
                     torch.are_deterministic_algorithms_enabled(),
                     torch.utils.deterministic.fill_uninitialized_memory))
        original(self, x, y)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    record = loop.run(tiny_config(tmp_path, root, iterations=2, batch_size=2))
    # bf16, channels_last batches, deterministic algorithms without NaN-filled fresh memory
    assert set(seen) == {("bf16", True, True, False)}
    assert record["config"]["precision"] == record["provenance"]["precision"] == "bf16"
    assert record["config"]["channels_last"] is True
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


# --- the batch a CPU profile trains at ---------------------------------------------------------------

def test_the_cpu_batch_is_the_fastest_measured_and_scales_the_schedule(measured, cpu_caps):
    cpu_caps(True)
    c = resolve(quick())
    assert c.batch_size == 128 and measured == [(TINY_MODEL, b, "bf16", True) for b in (64, 128, 256)]
    rule = recipes.scaled_schedule(recipes.RECIPES["cifar"], 128, recipes.PROFILES["cifar"]["quick"].fraction)
    assert (c.lr, c.iterations, c.milestones, c.warmup_iterations) == (
        rule["lr"], rule["iterations"], rule["milestones"], rule["warmup_iterations"])
    assert "at batch 128" in c.schedule_rule and c.iterations == 8_000 and c.warmup_iterations > 0
    assert "fastest on this CPU of 64, 128, 256" in c.batch_rule and "128: 366" in c.batch_rule
    assert "bf16 / channels_last" in c.batch_rule and c.to_dict()["batch_rule"] == c.batch_rule


def test_the_choice_is_measured_once_per_machine_and_setting(measured, cpu_caps, monkeypatch):
    cpu_caps(True)
    first = resolve(quick())
    again = resolve(quick(seed=1, model_kwargs={"attention": "spatial"}))  # same architecture: cached
    assert len(measured) == 3 and (again.batch_size, again.batch_rule) == (first.batch_size, first.batch_rule)
    saved = json.loads((cpu_batch.cache_dir() / cpu_batch.CACHE_NAME).read_text())
    assert list(saved) == [cpu_batch.cache_key(TINY_MODEL, "bf16", True)]
    assert saved[cpu_batch.cache_key(TINY_MODEL, "bf16", True)]["images_per_s"] == {str(b): r for b, r in RATES.items()}
    resolve(quick(precision="fp32"))  # another precision is another measurement
    assert len(measured) == 6 and {m[2] for m in measured[3:]} == {"fp32"}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # another thread count too
    resolve(quick())
    assert len(measured) == 9


def test_an_unreadable_cache_is_measured_again(measured, cpu_caps):
    cpu_caps(True)
    path = cpu_batch.cache_dir() / cpu_batch.CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert resolve(quick()).batch_size == 128 and len(measured) == 3
    assert json.loads(path.read_text())  # rewritten whole


@pytest.mark.parametrize("overrides, batch, rule", [
    ({"batch_size": 96}, 96, "explicit"),  # the user's batch wins
    ({"profile": "paper"}, 64, "the paper profile's"),  # the recipe's batch is the paper's, not a budget
    ({"profile": "smoke"}, 8, "the smoke profile's"),
    ({"device": "cuda"}, 256, "the quick profile's"),  # a GPU keeps the profile's batch
])
def test_no_measurement_where_the_batch_is_not_the_cpus_to_choose(measured, overrides, batch, rule):
    c = resolve(quick(**overrides))
    assert (c.batch_size, c.batch_rule, measured) == (batch, rule, [])


def test_the_books_commands_time_no_batch_and_read_the_same_on_any_machine(measured, monkeypatch):
    """Rendering a chapter's commands never times a CPU batch: the book must not change with the machine."""
    from ranlib.study import planning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as in CI: device auto is the CPU
    text = planning.train_commands("attention_types", profile="quick")
    assert measured == [] and "attention56-mixed-quick-s0" in text and "-b128" not in text


def test_processes_of_a_multi_process_run_keep_the_profiles_batch(measured, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # every process must resolve the same batch
    assert resolve(quick()).batch_size == 256 and measured == []


def test_a_remeasured_rule_does_not_stop_a_resume_but_another_batch_does(tmp_path, measured, cpu_caps):
    cpu_caps(True)
    c = resolve(quick())
    saved = {"config": {**c.to_dict(), "batch_rule": "fastest on this CPU of 64, 128, 256 (measured elsewhen)"}}
    loop._check_resumable(saved, c, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="batch_size"):
        loop._check_resumable({"config": {**c.to_dict(), "batch_size": 256}}, c, tmp_path / "last.pt")


def test_a_real_measurement_times_training_steps(real_step_timing, one_thread):
    rate = cpu_batch.step_images_per_s(TINY_MODEL, batch_size=2, precision="fp32", channels_last=True, steps=1,
                                       warmup=0)
    assert 0 < rate < float("inf")


# --- python -m ranlib.bench --device cpu, --precision-check ------------------------------------------

def fake_step(model, *, batch_size, precision, channels_last, **_):
    return RATES.get(batch_size, 10.0) * (2.0 if precision == "bf16" else 1.0) * (1.5 if channels_last else 1.0)


def fake_seconds(model, *, batch_size, **settings):
    """Steps at fake_step's rate by the wall clock, twice as fast per CPU-second."""
    seconds = batch_size / fake_step(model, batch_size=batch_size, **settings)
    return {"wall": [seconds] * 3, "cpu": [seconds / 2] * 3}


def test_the_cpus_figures_in_one_run(tmp_path, capsys, one_thread, cpu_caps, monkeypatch):
    cpu_caps(True)
    monkeypatch.setattr(cpu_bench, "step_seconds", fake_seconds)
    monkeypatch.setattr(cpu_batch, "step_images_per_s", fake_step)
    assert bench.main(["--device", "cpu", "--peak-size", "32", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / f"cpu-{TINY_MODEL}.json").read_text())
    assert record["benchmark"] == "cpu" and record["model"] == TINY_MODEL and record["loop"] is None
    assert {p["dtype"] for p in record["matmul_peak"].values()} == {"bf16", "fp32"}
    configs = {(r["precision"], r["channels_last"], r["batch_size"]) for r in record["step"]}
    assert configs == {(p, f, 256) for p in ("fp32", "bf16") for f in (False, True)} | {("bf16", True, 64),
                                                                                         ("bf16", True, 128)}
    for r in record["step"]:
        assert r["achieved_tflops"] == pytest.approx(6 * record["macs"] * r["images_per_s"] / 1e12)
        peak = record["matmul_peak"][r["precision"]]
        assert r["peak_share"] == pytest.approx(r["achieved_tflops"] / peak["tflops"])
        assert r["images_per_cpu_s"] == pytest.approx(2 * r["images_per_s"])
        assert r["peak_share_cpu_time"] == pytest.approx(6 * record["macs"] * r["images_per_cpu_s"] / 1e12
                                                         / peak["cpu_tflops"])
    assert record["default"] == {"precision": "bf16", "channels_last": True, "batch_size": 128, "cached_choice": 128}
    assert record["conditions"]["start"]["threads"] == 1 and record["provenance"]["device_type"] == "cpu"
    out = capsys.readouterr().out
    assert "matrix-product peak bf16" in out and "fastest batch now 128" in out and "loop: not measured" in out
    assert bench.main(["--device", "cpu", "--peak-size", "32", "--out", str(tmp_path)]) == 1  # no silent overwrite


def test_the_loops_share_of_the_bare_step(tmp_path, one_thread):
    root = make_folder_dataset(tmp_path / "data", n_train=16, n_test=4)
    out = tmp_path / "results" / "performance" / "cpu.json"
    assert bench.main(["--device", "cpu", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--peak-size", "32",
                       "--dataset", "folder", "--data-root", str(root), "--iterations", "8", "--max-test-samples", "4",
                       "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    [read] = performance.read_performance("cpu", tmp_path / "results")  # what the Performance page reads
    assert len(performance.cpu_table([read])) == 4 and performance.loop_share_table([read])["loop share %"].item() == \
        round(100 * record["loop"]["share"], 1)
    assert {r["batch_size"] for r in record["step"]} == {2} and len(record["step"]) == 4
    loop = record["loop"]
    assert loop["iterations"] == 8 and loop["log_every"] == 2 and len(loop["loop_window_images_per_s"]) == 3
    assert len(loop["bare_step_images_per_s"]) == 2 and loop["dataset"]["num_train"] == 16
    assert loop["share"] == pytest.approx(loop["loop_images_per_s"] / (sum(loop["bare_step_images_per_s"]) / 2))
    assert len(loop["bare_step_images_per_cpu_s"]) == 2 and loop["share_cpu_time"] == pytest.approx(
        loop["loop_images_per_cpu_s"] / (sum(loop["bare_step_images_per_cpu_s"]) / 2))


def test_window_rates_undo_the_cumulative_rate():
    # 10 images in 1 s, then 10 in 2 s: the cumulative rates are 10 and 20 / 3; CPU time 0.5 s, then 4 s
    lines = [{"iteration": 5, "images_per_s": 10.0, "process_cpu_s": 3.5},
             {"iteration": 10, "images_per_s": 20.0 / 3, "process_cpu_s": 7.5}]
    assert cpu_bench.window_rates(lines, batch_size=2) == pytest.approx([10.0, 5.0])
    assert cpu_bench.cpu_time_rates(lines, batch_size=2) == pytest.approx([2.5])


def test_bf16_against_two_fp32_seeds(tmp_path, capsys, one_thread):
    root = make_folder_dataset(tmp_path / "data", n_train=16, n_test=4)
    out = tmp_path / "results" / "performance"
    assert bench.main(["--precision-check", "--batch-size", "2", "--dataset", "folder", "--data-root", str(root),
                       "--iterations", "4", "--max-test-samples", "4", "--out", str(out)]) == 0
    record = json.loads((out / f"precision-check-{TINY_MODEL}-b2.json").read_text())
    table = performance.precision_check_table(performance.read_performance("precision_check", tmp_path / "results"))
    assert table["bf16 trains like fp32"].tolist() == ["yes" if record["agree"] else "no"]  # the open-choices page
    assert [(r["precision"], r["seed"]) for r in record["runs"]] == [("fp32", 0), ("fp32", 1), ("bf16", 0)]
    assert all(r["iterations"] == [1, 2, 3, 4] and len(r["train_loss"]) == 4 for r in record["runs"])
    fp32_0, fp32_1, bf16_0 = (r["train_loss"] for r in record["runs"])
    gap = sum(abs(a - b) for a, b in zip(bf16_0, fp32_0)) / 4
    spread = sum(abs(a - b) for a, b in zip(fp32_1, fp32_0)) / 4
    assert record["mean_abs_gap"] == pytest.approx({"bf16_vs_fp32_same_seed": gap, "fp32_seeds": spread})
    assert record["agree"] == (gap <= spread) and record["provenance"]["device_type"] == "cpu"
    assert "within the spread of two fp32 seeds" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "folder"], "--dataset and --data-root go together"),
    (["--precision-check"], "--precision-check trains on real data"),
])
def test_bad_cpu_bench_input_is_one_line(extra, message, capsys):
    assert bench.main(["--device", "cpu", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
