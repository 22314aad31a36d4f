"""The training-step benchmark's options: grad checkpointing, the profiler pass, concurrent processes."""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ranlib.bench import cli as bench
from ranlib.bench import concurrent as concurrent_bench
from ranlib.bench import fused as fused_bench
from ranlib.bench import layers as layer_bench
from ranlib.bench import profile as profile_bench
from ranlib.bench import step as step_bench
from ranlib.errors import CheckpointError, ConfigError, RanlibError, UnknownNameError
from ranlib.models import fused
from ranlib.training import loop
from ranlib.training.config import resolve
from ranlib.training.results import benchmark_file_name

from test_cli import error_line
from test_train import TINY_MODEL, make_folder_dataset, one_thread, tiny_config  # noqa: F401 (fixture)

TINY = ["--model", TINY_MODEL, "--batch-size", "4", "--num-images", "8", "--steps", "2", "--warmup", "1",
        "--device", "cpu", "--precision", "fp32", "--no-channels-last"]  # one configuration, not the CPU's figures


@pytest.fixture
def checkpointed(monkeypatch) -> list:
    """The models that ranlib.training.loop.enable_grad_checkpointing was called on (and really changed)."""
    models, enable = [], loop.enable_grad_checkpointing

    def spy(model, name):
        enable(model, name)
        models.append(model)

    monkeypatch.setattr(loop, "enable_grad_checkpointing", spy)
    return models


def mask_checkpointing(model) -> set:
    return {m.checkpoint_mask for m in model.modules() if hasattr(m, "checkpoint_mask")}


# --- grad checkpointing -----------------------------------------------------------------------------

def test_bench_with_grad_checkpointing_records_it_and_names_the_file(tmp_path, capsys, one_thread, checkpointed):
    assert bench.main([*TINY, "--grad-checkpointing", "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [f"{TINY_MODEL}-32-b4-fp32-nchw-gc.json"]
    record = json.loads(next(tmp_path.iterdir()).read_text())
    assert set(record) == {"benchmark", "model", "input_size", "batch_size", "params", "macs", "device_name",
                           "bf16_peak_tflops", "ranlib", "speedup", "projection", "provenance"}
    assert record["ranlib"]["grad_checkpointing"] is True and record["ranlib"]["images_per_s"] > 0
    assert len(checkpointed) == 1 and mask_checkpointing(checkpointed[0]) == {True}
    assert "fp32, NCHW, grad checkpointing" in capsys.readouterr().out


def test_bench_without_grad_checkpointing_leaves_it_off(tmp_path, one_thread, checkpointed):
    out = tmp_path / "plain.json"
    assert bench.main([*TINY, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ranlib"]["grad_checkpointing"] is False and not checkpointed
    assert benchmark_file_name(json.loads(out.read_text())) == f"{TINY_MODEL}-32-b4-fp32-nchw.json"


def test_suite_measures_attention56_with_and_without_grad_checkpointing():
    both = [case.grad_checkpointing for case in bench.SUITE if (case.model, case.batch_size) == ("attention56", 64)]
    assert sorted(both) == [False, True]


def test_grad_checkpointing_trains_through_run(tmp_path, one_thread, checkpointed):
    root = make_folder_dataset(tmp_path / "data", n_train=8, n_test=4)
    record = loop.run(tiny_config(tmp_path, root, grad_checkpointing=True, iterations=2))
    assert record["config"]["grad_checkpointing"] is True
    assert len(checkpointed) == 1 and mask_checkpointing(checkpointed[0]) == {True}
    assert record["curve"] and all(math.isfinite(point["train_loss"]) for point in record["curve"])
    with pytest.raises(ConfigError, match="no attention mask branch"):  # a plain ResNet: refused, not ignored
        loop.run(tiny_config(tmp_path, root, model="cifar_resnet164", grad_checkpointing=True, run_name="resnet"))


def test_grad_checkpointing_is_refused_for_models_without_mask_branches():
    from torchvision.models import resnet18  # the class of the torchvision baselines (resnet152, ...)

    with pytest.raises(ConfigError, match="^model resnet152 has no attention mask branch to checkpoint"):
        loop.enable_grad_checkpointing(resnet18(num_classes=10), "resnet152")


def test_bench_refuses_grad_checkpointing_of_a_plain_resnet(capsys, one_thread):
    assert bench.main([*TINY, "--model", "cifar_resnet164", "--grad-checkpointing"]) == 1
    assert "no attention mask branch" in error_line(capsys)


def test_a_checkpoint_from_before_the_field_resumes_and_may_switch_it(tmp_path):
    config = tiny_config(tmp_path, tmp_path)
    older = config.to_dict()
    del older["grad_checkpointing"]  # written before TrainConfig had the field
    loop._check_resumable({"config": older}, config, Path("last.pt"))
    # It does not change the model (same steps, same running statistics): a resume may switch it.
    loop._check_resumable({"config": older}, dataclasses.replace(config, grad_checkpointing=True),
                           Path("last.pt"))
    with pytest.raises(CheckpointError, match="lr: "):
        loop._check_resumable({"config": older}, dataclasses.replace(config, lr=0.5), Path("last.pt"))


# --- profiler pass --------------------------------------------------------------------------------

def test_profile_writes_where_the_time_goes(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.setattr(profile_bench, "PROFILE_STEPS", 2)
    figures = tmp_path / "figures.json"
    assert bench.main([*TINY, "--json", str(figures), "--profile", str(tmp_path / "profiles")]) == 0
    assert "profile" not in json.loads(figures.read_text())
    path = tmp_path / "profiles" / f"{TINY_MODEL}-32-b4-fp32-nchw-profile.json"
    profile = json.loads(path.read_text())
    assert profile["benchmark"] == 1 and profile["model"] == TINY_MODEL and profile["setup"] == "gpu_batches, fp32, NCHW"
    assert profile["profiled_steps"] == profile_bench.PROFILE_STEPS and "device" not in profile  # no CUDA here
    host = profile["host"]
    categories = host["categories_us"]
    assert set(categories) == {name for name, _ in profile_bench.PROFILE_CATEGORIES} | {"other"}
    assert all(us >= 0 for us in categories.values())
    assert sum(categories.values()) == pytest.approx(host["total_self_us"], rel=1e-6)
    assert host["per_step_ms"] == pytest.approx(host["total_self_us"] / profile_bench.PROFILE_STEPS / 1e3)
    # Attention-56 runs all of these every step; the names the profiler gives must land in them.
    for category in ("conv/matmul", "batchnorm", "pool/upsample", "elementwise/activation", "optimizer"):
        assert categories[category] > 0, category
    top = host["top"]
    assert 0 < len(top) <= profile_bench.PROFILE_TOP
    assert [r["self_us"] for r in top] == sorted((r["self_us"] for r in top), reverse=True)
    assert all(r["category"] == profile_bench.profile_category(r["name"]) and r["count"] >= 1 for r in top)
    printed = capsys.readouterr().out
    assert f"profile of {profile_bench.PROFILE_STEPS} steps" in printed and "conv/matmul" in printed


@pytest.mark.parametrize("name, category", [
    ("aten::cudnn_convolution", "conv/matmul"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv/matmul"),
    ("aten::addmm", "conv/matmul"),
    ("cudnn::bn_fw_tr_1C11_kernel_NCHW", "batchnorm"),
    ("NativeBatchNormBackward0", "batchnorm"),
    ("void at::native::(anonymous namespace)::upsample_bilinear2d_out_frame<float, float>", "pool/upsample"),
    ("aten::max_pool2d_with_indices", "pool/upsample"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::sigmoid_kernel_cuda>", "elementwise/activation"),
    ("aten::mul", "elementwise/activation"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "memcpy/copy"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy/copy"),
    ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<3>>", "optimizer"),
    ("Optimizer.step#SGD.step", "optimizer"),
    ("torch::autograd::AccumulateGrad", "other"),
    ("aten::empty", "other"),
])
def test_profile_categories_of_op_and_kernel_names(name, category):
    assert profile_bench.profile_category(name) == category


def test_idle_fraction_counts_overlapping_spans_once():
    assert profile_bench.idle_fraction([(5, 6), (0, 2), (1, 3)], 0, 10) == pytest.approx(0.6)
    assert profile_bench.idle_fraction([], 0, 10) == 1.0


# --- several processes at once --------------------------------------------------------------------

@pytest.mark.slow
def test_processes_report_each_rate_and_the_total(tmp_path, capsys, one_thread):
    out = tmp_path / "concurrent.json"
    assert bench.main([*TINY, "--processes", "2", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    concurrent = record["concurrent"]
    assert concurrent["processes"] == 2 and len(concurrent["images_per_s"]) == 2
    assert all(rate > 0 for rate in concurrent["images_per_s"]) and len(concurrent["peak_memory_bytes"]) == 2
    assert concurrent["one_process_images_per_s"] == record["ranlib"]["images_per_s"]
    assert concurrent["ratio"] == pytest.approx(concurrent["aggregate_images_per_s"] / record["ranlib"]["images_per_s"])
    # The total is over the shared wall-clock window, so it cannot beat the sum of the processes' own rates
    # by more than timing noise.
    assert 0 < concurrent["aggregate_images_per_s"] <= 1.2 * sum(concurrent["images_per_s"])
    assert "2 processes at once" in capsys.readouterr().out


def test_a_failing_process_stops_the_others_and_says_why(one_thread):
    # The workers in this process (spawning costs seconds of imports per process on CPU).
    kwargs = dict(batch_size=4, device=torch.device("cpu"), precision="fp32", channels_last=False,
                  compile_model=False, steps=1, warmup=0, data="gpu_batches", num_images=8, seed=0)
    barrier, answers = threading.Barrier(2), queue.Queue()
    concurrent_bench._concurrent_worker(TINY_MODEL, {**kwargs, "image_size": 64}, barrier, answers)  # fails
    assert barrier.broken  # so that the other process does not wait for it for ever
    concurrent_bench._concurrent_worker(TINY_MODEL, kwargs, barrier, answers)  # would run, but the barrier is broken
    failed, stopped = answers.get_nowait(), answers.get_nowait()
    assert stopped == {"error": None}
    with pytest.raises(RanlibError, match="worker failed: RanlibError: the gpu_batches data path is for 32x32"):
        concurrent_bench._combine([stopped, failed], batch_size=4)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps >= 1"),
    (["--model", "no_such_model"], "no_such_model"),
    (["--processes", "0"], "--processes >= 1"),
])
def test_bad_input_is_one_line(extra, message, capsys):
    assert bench.main([*TINY, *extra]) == 1
    assert message in error_line(capsys)


# --- torch.compile mode -----------------------------------------------------------------------------

@pytest.fixture
def compiled(monkeypatch) -> list:
    """The modes torch.compile was called with; the model runs uncompiled (compiling is minutes on CPU)."""
    modes = []

    def spy(model, mode=None):
        modes.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", spy)
    return modes


def test_bench_compile_mode_reaches_torch_compile_and_the_file_name(tmp_path, one_thread, compiled):
    assert bench.main([*TINY, "--compile-mode", "reduce-overhead", "--out", str(tmp_path)]) == 0
    assert compiled == ["reduce-overhead"]
    [path] = tmp_path.iterdir()
    assert path.name == f"{TINY_MODEL}-32-b4-fp32-nchw-compiled-reduce-overhead.json"
    assert json.loads(path.read_text())["ranlib"]["compile_mode"] == "reduce-overhead"


def test_train_compile_mode_is_checked_and_reaches_torch_compile(tmp_path, one_thread, compiled):
    root = make_folder_dataset(tmp_path / "data", n_train=8, n_test=4)
    loop.run(tiny_config(tmp_path, root, compile=True, compile_mode="reduce-overhead", iterations=2))
    assert compiled == ["reduce-overhead"]
    with pytest.raises(ConfigError, match="without --compile"):
        resolve(tiny_config(tmp_path, root, compile_mode="max-autotune"))
    with pytest.raises(UnknownNameError, match="unknown compile mode"):
        resolve(tiny_config(tmp_path, root, compile=True, compile_mode="fastest"))


# --- the Performance page's tables ------------------------------------------------------------------

def test_performance_tables_read_the_figures_and_profiles_bench_wrote(tmp_path, one_thread):
    from ranlib.study import performance

    out = tmp_path / "performance"
    assert bench.main([*TINY, "--baseline", "--out", str(out), "--profile", str(out / "profiles")]) == 0
    [b] = performance.read_benchmarks(tmp_path)
    assert b["profile"] is not None and b["file"] == f"{TINY_MODEL}-32-b4-fp32-nchw.json"
    [row] = performance.performance_table([b]).to_dict("records")
    assert row["speed-up"] == round(b["speedup"], 2) and row["setup"] == "gpu_batches, fp32, NCHW"
    [profiled] = performance.profile_table([b]).to_dict("records")
    shares = [v for k, v in profiled.items() if k.endswith(" %") and k != "GPU idle %"]
    assert sum(shares) == pytest.approx(100, abs=0.5)
    assert performance.concurrency_table([b]).empty
    assert performance.performance_targets([b]).empty  # a tiny CPU model speaks to no target


def test_performance_targets_are_judged_on_the_right_configurations(tmp_path, one_thread):
    from ranlib.study import performance

    out = tmp_path / "figures.json"
    assert bench.main([*TINY, "--baseline", "--json", str(out)]) == 0
    base = json.loads(out.read_text())

    def variant(model, size, batch, speedup, paper_min, quick_min, reserved=None):
        r = json.loads(json.dumps(base))
        r.update(model=model, input_size=size, batch_size=batch, speedup=speedup)
        r["projection"].update(paper_schedule_min=paper_min, quick_profile_min=quick_min)
        r["ranlib"]["peak_reserved_bytes"] = reserved
        return r

    targets = performance.performance_targets([
        variant("cifar_attention92", 32, 64, 3.4, 25.0, 2.5),
        variant("cifar_attention92", 32, 256, 2.9, 12.0, 1.2),
        variant("attention56", 224, 64, 1.5, 90.0, 9.0, reserved=12e9),
    ]).set_index(["target", "batch"])
    assert targets.loc[("CIFAR path >= 3x the plain baseline", 64), "met"] == "yes"
    assert targets.loc[("CIFAR path >= 3x the plain baseline", 256), "met"] == "no"
    assert targets.loc[("paper-length schedule <= 20 min (projected)", 64), "met"] == "no"
    assert targets.loc[("paper-length schedule <= 20 min (projected)", 256), "met"] == "yes"
    quick = targets.xs("quick profile <= 3 min (projected)")
    assert list(quick.index) == [256] and quick["met"].tolist() == ["yes"]  # only at the quick batch
    memory = targets.loc[("training step <= 11 GB peak memory", 64)]
    assert (memory["measured"], memory["met"]) == ("12.00 GB", "no")


def test_a_concurrent_measurement_gets_a_file_of_its_own():
    record = {"model": "m", "input_size": 32, "batch_size": 4, "concurrent": {"processes": 4},
              "ranlib": {"precision": "bf16", "channels_last": True, "grad_checkpointing": False, "compile": False}}
    assert benchmark_file_name(record) == "m-32-b4-bf16-cl-x4.json"


# --- horizontal fusion (--fused) ----------------------------------------------------------------------

FUSED_TINY = ["--fused", "--fused-models", TINY_MODEL, "--members", "1", "2", "--fused-batches", "2", "--steps", "2",
              "--device", "cpu", "--peak-size", "32", "--baseline-workers", "0"]


def test_fused_bench_writes_its_file_beside_the_others_and_the_report_reads_both(tmp_path, capsys, one_thread):
    from ranlib.study import performance

    out = tmp_path / "performance"
    assert bench.main([*TINY, "--baseline", "--out", str(out)]) == 0  # an ordinary figures file beside it
    assert bench.main([*FUSED_TINY, "--out", str(out)]) == 0
    record = json.loads((out / fused_bench.FUSED_FILE).read_text())
    assert set(record) == {"benchmark", "device_name", "bf16_peak_tflops_datasheet", "models", "batches", "members",
                           "graphs", "precision", "channels_last", "seed", "budget_seconds", "plan", "matmul_peak",
                           "fused", "baselines", "layers", "failed", "skipped", "spent_seconds", "targets",
                           "complete", "provenance"}
    assert record["benchmark"] == "fused" and record["matmul_peak"]["tflops"] > 0 and record["failed"] == []
    assert record["complete"] is True and [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # No CUDA here: the graph configurations are skipped, and say why; everything else was measured.
    assert {s["item"] for s in record["skipped"]} == {f"fused {TINY_MODEL} b2 K={k} graphs on" for k in (1, 2)}
    assert {s["reason"] for s in record["skipped"]} == {"CUDA graphs need a CUDA device"}
    assert len(record["plan"]) == len(record["fused"]) + len(record["baselines"]) + len(record["layers"]) + 2
    solo, pair = sorted(record["fused"], key=lambda f: f["members"])
    assert (solo["members"], pair["members"]) == (1, 2) and not pair["graphs"] and not pair["graph_captured"]
    assert pair["images_per_s"] == pytest.approx(2 * pair["images_per_s_per_member"])
    assert pair["images_per_s"] == pytest.approx(2 * 2 * 1e3 / pair["step_time_ms_mean"])
    assert pair["achieved_tflops"] == pytest.approx(6 * pair["macs_per_image"] * pair["images_per_s"] / 1e12)
    assert pair["peak_share"] == pytest.approx(pair["achieved_tflops"] / record["matmul_peak"]["tflops"])
    assert solo["vs_separate"] == pytest.approx(1.0) and solo["vs_best_solo"] == pytest.approx(1.0)
    assert pair["vs_separate"] == pytest.approx(pair["images_per_s"] / solo["images_per_s"])
    [baseline] = record["baselines"]
    assert baseline["precision"] == "fp32" and baseline["data"] == "dataloader"
    assert pair["vs_baseline"] == pytest.approx(pair["images_per_s"] / baseline["images_per_s"])
    [layers] = record["layers"]
    assert layers["members"] == 2 and layers["layers"] and layers["not_measured"] == 0
    assert {row["alternative"] for row in layers["layers"]} == {"bmm", "dense_block_diagonal"}
    assert all(row["winner"] in ("grouped", row["alternative"]) and row["grouped_ms"] > 0 for row in layers["layers"])
    assert [t["met"] for t in record["targets"]] == [None] * 4  # a tiny model on a CPU speaks to no target
    printed = capsys.readouterr().out
    assert "x separate" in printed and "target not measured" in printed
    # The Performance page's readers: the ordinary file as before, the fused one on its own.
    [ordinary] = performance.read_benchmarks(tmp_path)
    assert ordinary["file"] == f"{TINY_MODEL}-32-b4-fp32-nchw.json" and len(performance.performance_table([ordinary])) == 1
    fused = performance.read_fused_benchmarks(tmp_path)
    assert len(fused) == 1 and len(performance.fused_table(fused)) == 2
    assert performance.fused_targets(fused)["met"].tolist() == ["not measured"] * 4
    assert bench.main([*FUSED_TINY, "--out", str(out)]) == 1  # no silent overwrite
    assert "already exists" in error_line(capsys)


def _fake_fused(seconds: float = 0.0, fail_at: int | None = None):
    calls = []

    def fake(model_name, *, members, batch_size, graphs, **_):
        calls.append(members)
        if members == fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
        import time
        time.sleep(seconds)
        step_ms = 10.0 * members
        return {"model": model_name, "members": members, "batch_size": batch_size, "graphs": graphs,
                "graph_captured": graphs, "step_time_ms_mean": step_ms, "images_per_s": members * batch_size / step_ms * 1e3,
                "images_per_s_per_member": batch_size / step_ms * 1e3, "achieved_tflops": 1.0, "warmup": 1,
                "build_seconds": 0.0, "seconds": seconds}

    return fake, calls


def test_fused_bench_stops_when_the_budget_is_spent_and_says_what_it_skipped(tmp_path, monkeypatch, capsys, one_thread):
    fake, calls = _fake_fused(seconds=0.6)
    monkeypatch.setattr(fused_bench, "measure_fused", fake)
    out = tmp_path / "fused.json"
    assert bench.main([*FUSED_TINY, "--graphs", "off", "--budget-seconds", "0.5", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert calls == [2]  # the first planned configuration, started within the budget; nothing after it
    assert [s["item"] for s in record["skipped"]] == record["plan"][1:]
    assert {s["reason"] for s in record["skipped"]} == {"budget spent"}
    assert record["budget_seconds"] == 0.5 and record["spent_seconds"] >= 0.6
    assert "skipped 3 of 4 (budget spent)" in capsys.readouterr().out


def test_fused_bench_skips_a_configuration_predicted_to_overrun():
    done = [{"model": "m", "members": 1, "batch_size": 64, "step_time_ms_mean": 100.0, "warmup": 4,
             "build_seconds": 1.0}]
    # K = 8 at batch 256: building 8 s, steps up to 32 x 0.1 s each; 5 warm-up steps and 1.5 s timed (at least 3)
    predicted = fused_bench._predicted_seconds(("fused", "m", 256, 8, True), done, 50, 1.5)
    assert predicted == pytest.approx(8.0 + 5 * 3.2 + 3 * 3.2)
    assert fused_bench._predicted_seconds(("fused", "other", 64, 8, True), done, 50, 1.5) == 0.0  # nothing known


def test_a_failing_fused_configuration_is_recorded_and_the_rest_measured(tmp_path, monkeypatch, one_thread):
    fake, calls = _fake_fused(fail_at=2)
    monkeypatch.setattr(fused_bench, "measure_fused", fake)
    monkeypatch.setattr(layer_bench, "measure_layer_alternatives", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")))
    out = tmp_path / "fused.json"
    assert bench.main([*FUSED_TINY, "--members", "1", "2", "4", "--graphs", "off", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert sorted(calls) == [1, 2, 4]
    failed = {f["item"]: f["error"] for f in record["failed"]}
    assert failed.pop(f"fused {TINY_MODEL} b2 K=2 graphs off") == \
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"  # its first line
    assert set(failed) == {f"layers {TINY_MODEL} b2 K={k}" for k in (2, 4)}
    assert set(failed.values()) == {"RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"}
    assert sorted(f["members"] for f in record["fused"]) == [1, 4]


def test_fused_plan_measures_the_targets_configuration_first():
    plan = fused_bench.fused_plan(["cifar_attention92", "cifar_resnet164"], [64, 256], [1, 2, 4, 8, 16], [True, False])
    assert [fused_bench.plan_label(item) for item in plan[:9]] == [
        "fused cifar_attention92 b64 K=8 graphs on", "fused cifar_attention92 b64 K=1 graphs on",
        "fused cifar_attention92 b64 K=1 graphs off", "baseline cifar_attention92 b64",
        "fused cifar_attention92 b256 K=8 graphs on", "fused cifar_attention92 b256 K=1 graphs on",
        "fused cifar_attention92 b256 K=1 graphs off", "layers cifar_attention92 b64 K=8",
        "fused cifar_attention92 b64 K=8 graphs off"]
    assert len(plan) == len(set(plan)) == 2 * 2 * 5 * 2 + 2 * 2 + 2 * 2 * 4  # every configuration, once


@pytest.mark.parametrize("stride", [1, 2])
def test_a_grouped_1x1_convolution_as_a_batched_matrix_product_is_the_same(stride):
    generator = torch.Generator().manual_seed(0)
    k, cin, cout = 3, 4, 5
    x = torch.randn(2, k * cin, 6, 6, dtype=torch.float64, generator=generator)
    weight = torch.randn(k * cout, cin, 1, 1, dtype=torch.float64, generator=generator)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xm = x.contiguous(memory_format=memory_format)
        torch.testing.assert_close(fused.grouped_1x1_as_bmm(xm, weight, k, stride),
                                   F.conv2d(xm, weight, stride=stride, groups=k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_grouped_3x3_convolution_as_a_dense_one_with_block_diagonal_weight_is_the_same(stride):
    generator = torch.Generator().manual_seed(0)
    k, cin, cout = 3, 2, 4
    x = torch.randn(2, k * cin, 7, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(k * cout, cin, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    dense = fused.block_diagonal_weight(weight, k)
    assert dense.shape == (k * cout, k * cin, 3, 3)
    for i in range(k):  # the members' blocks on the diagonal, zeros elsewhere
        for j in range(k):
            block = dense[i * cout:(i + 1) * cout, j * cin:(j + 1) * cin]
            assert torch.equal(block, weight[i * cout:(i + 1) * cout] if i == j else torch.zeros_like(block))
    ours = fused.grouped_as_dense(x, weight, k, stride, 1)
    reference = F.conv2d(x, weight, stride=stride, padding=1, groups=k)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(reference)  # and the gradients the timed passes compute
    for a, b in zip(torch.autograd.grad(ours, (x, weight), grad), torch.autograd.grad(reference, (x, weight), grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_1x1_alternative_gives_the_same_gradients():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(9, 2, 1, 1, dtype=torch.float64, generator=generator, requires_grad=True)
    ours, reference = fused.grouped_1x1_as_bmm(x, weight, 3), F.conv2d(x, weight, groups=3)
    grad = torch.randn_like(reference)
    for a, b in zip(torch.autograd.grad(ours, (x, weight), grad), torch.autograd.grad(reference, (x, weight), grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_fused_run_stopped_from_outside_leaves_what_it_measured(tmp_path, monkeypatch, one_thread):
    fake, calls = _fake_fused()
    monkeypatch.setattr(fused_bench, "measure_fused", fake)

    def killed(*args, **kwargs):  # the sitting's time limit strikes during the baseline
        raise KeyboardInterrupt

    monkeypatch.setattr(step_bench, "measure", killed)
    out = tmp_path / "fused.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main([*FUSED_TINY, "--graphs", "off", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["complete"] is False and [f["members"] for f in record["fused"]] == calls == [2, 1]
    assert record["fused"][0]["vs_separate"] == pytest.approx(1.0) and "provenance" in record  # the fake scales linearly
