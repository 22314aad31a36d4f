"""Horizontal fusion: K members trained as one wide model equal K separate trainings.

Model-level comparisons run in float64, where fp32 rounding cannot hide a wrong wiring; the
training-loop tests check that a fused group writes, resumes and evaluates like solo runs.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F

import ranlib
from ranlib.errors import CheckpointError, ConfigError, ResultsExistError
from ranlib.models.fused import (FusedConv2d, FusionError, choose_conv_impls, fuse, fuse_inputs, fused_optimizer_state,
                                 member_optimizer_state, member_state_dict, member_view, shared_inputs)
from ranlib.training import evaluation, loop
from ranlib.training.config import TrainConfig, resolve
from ranlib.training.results import load_results
from ranlib.training.step import TrainStep

from test_train import REPO, make_folder_dataset, single_thread, subprocess_env, tiny_config

# (model, each member's switches): every CIFAR family and switch, ARL and NAL side by side.
CASES = [
    ("cifar_attention56", [{}, {"residual_attention": False}, {}]),
    ("cifar_attention56", [{"attention": "channel"}, {"attention": "channel", "residual_attention": False}]),
    ("cifar_attention56", [{"attention": "spatial"}, {"attention": "spatial"}]),
    ("cifar_attention56", [{"mask": "local"}, {"mask": "local", "residual_attention": False}]),
    ("cifar_attention92", [{"residual_attention": False}, {}]),
    ("cifar_resnet164", [{}, {}]),
    ("cifar_wrn16_8", [{}, {}]),
]


def _members(name: str, switches: list[dict]) -> list[torch.nn.Module]:
    members = []
    for seed, kwargs in enumerate(switches):
        torch.manual_seed(seed)
        members.append(ranlib.create_model(name, **kwargs).double())
    return members


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with single_thread():
        yield
    torch.set_default_dtype(previous)


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float = 1e-10) -> None:
    """Equal up to rounding: max difference <= ``tolerance`` x the tensor's largest magnitude (float64: 1e-10)."""
    scale = expected.abs().max().item() or 1.0
    worst = (actual - expected).abs().max().item()
    assert worst <= tolerance * scale, f"{what}: differs by {worst:.3g} (scale {scale:.3g})"


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name,switches", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_fused_training_equals_separate_training(name, switches, float64):
    members = _members(name, switches)
    k, batch = len(members), 4
    fused = fuse(members)
    references = [m.state_dict() for m in members]
    separate = [(m, _sgd(m.parameters())) for m in members]
    windows = [torch.zeros(k, 3, dtype=torch.float64)]
    step = TrainStep(fused, fused, _sgd(fused.parameters()), windows=windows, precision="fp32")
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):  # two Nesterov steps, each member with its own images and (noisy) labels
        xs = [torch.randn(batch, 3, 32, 32, generator=generator) for _ in range(k)]
        ys = [torch.randint(0, 10, (batch,), generator=generator) for _ in range(k)]
        for (model, optimizer), x, y in zip(separate, xs, ys):
            F.cross_entropy(model(x), y).backward()
        probe = copy.deepcopy(fused)  # the gradients the step is about to apply
        F.cross_entropy(probe(fuse_inputs(xs)).transpose(1, 2), torch.stack(ys, 1),
                        reduction="none").mean(0).sum().backward()
        grads = {n: p.grad for n, p in probe.named_parameters()}
        for i, (model, _) in enumerate(separate):  # each member gets its own solo gradient
            for n, p in model.named_parameters():
                _assert_same(grads[n].chunk(k)[i], p.grad, n)
        step(fuse_inputs(xs), torch.stack(ys, 1))
        for model, optimizer in separate:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    fused_state = fused.state_dict()
    x = torch.randn(2, 3, 32, 32, generator=generator)
    fused.eval()
    logits = fused(shared_inputs(x, k))
    for i, (model, _) in enumerate(separate):  # parameters and BN statistics, split back into solo models
        split = member_state_dict(fused_state, i, k, reference=references[i], steps=2)
        solo = ranlib.create_model(name, **switches[i]).double()
        solo.load_state_dict(split, strict=True)
        for key, value in model.state_dict().items():
            if value.ndim:
                _assert_same(split[key], value, key)
        model.eval()
        solo.eval()
        _assert_same(logits[:, i], model(x), "fused logits")
        _assert_same(solo(x), model(x), "split model's logits")
    assert windows[0][:, 2].tolist() == [2.0 * batch] * k  # images counted per member


def test_fused_model_keeps_solo_keys_and_drops_batch_counters():
    members = _members("cifar_attention56", [{}, {}])
    fused = fuse(members)
    solo_keys = set(members[0].state_dict())
    assert set(fused.state_dict()) == {k for k in solo_keys if not k.endswith("num_batches_tracked")}
    assert all(m.num_batches_tracked is None for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d))
    out = fused(torch.randn(2, 6, 32, 32, dtype=torch.float64))
    assert out.shape == (2, 2, 10)
    assert member_view(torch.zeros(2, 6, 4, 4), 2).shape == (2, 2, 3, 4, 4)


def test_members_of_different_architectures_are_refused():
    with pytest.raises(FusionError, match="architecture"):
        fuse([ranlib.create_model("cifar_attention56"), ranlib.create_model("cifar_resnet164")])
    with pytest.raises(FusionError, match="attention"):
        fuse([ranlib.create_model("cifar_attention56"), ranlib.create_model("cifar_attention56", attention="channel")])
    with pytest.raises(FusionError, match="no fused form"):
        fuse([ranlib.create_model("attentioninception56", num_classes=10)] * 2)


def test_optimizer_state_splits_and_fuses_back():
    members = _members("cifar_resnet164", [{}, {}])
    fused = fuse(members)
    optimizer = _sgd(fused.parameters())
    fused(torch.randn(2, 6, 32, 32, dtype=torch.float64)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    parts = [member_optimizer_state(state, i, 2) for i in range(2)]
    again = fused_optimizer_state(parts)
    for index, entry in state["state"].items():
        assert torch.equal(again["state"][index]["momentum_buffer"], entry["momentum_buffer"])
    first = next(iter(parts[0]["state"].values()))["momentum_buffer"]
    assert first.shape[0] * 2 == next(iter(state["state"].values()))["momentum_buffer"].shape[0]


# --- the training loop -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def group_and_solo(tmp_path_factory, data_root):
    """A fused group of three (two seeds, a noisy member, a NAL member) and the same runs alone, one step long:
    in fp32, grouped and plain convolutions round differently, and at batch 4 such differences grow about a
    hundredfold per step (float64 equality over two steps is tested above)."""
    tmp = tmp_path_factory.mktemp("group")
    variants = [dict(seed=0), dict(seed=1, noise_level=0.3), dict(seed=0, model_kwargs={"residual_attention": False})]
    variants = [dict(v, iterations=1, eval_every=1, precision="fp32") for v in variants]
    with single_thread():
        group = loop.run_group([tiny_config(tmp / "fused", data_root, **v) for v in variants])
        solo = [loop.run(tiny_config(tmp / "solo", data_root, **v)) for v in variants]
    return tmp, group, solo


@pytest.mark.slow
def test_a_group_writes_one_solo_results_file_per_member(group_and_solo):
    tmp, group, solo = group_and_solo
    loaded = {r["run_name"]: r for r in load_results(tmp / "fused" / "results" / "unit")}  # schema-checked
    assert sorted(loaded) == sorted(r["run_name"] for r in solo)
    for fused_record, solo_record in zip(group, solo):
        assert fused_record["run_name"] == solo_record["run_name"]
        assert fused_record.keys() == solo_record.keys()
        assert fused_record["noise"] == solo_record["noise"]  # the same labels, noise draw included
        assert fused_record["provenance"]["group"]["size"] == 3
        assert fused_record["provenance"]["group"]["device_share"] == pytest.approx(1 / 3)
        assert solo_record["provenance"]["group"]["size"] == 1
        [a], [b] = fused_record["curve"], solo_record["curve"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-3)
        assert fused_record["final"]["num_test"] == solo_record["final"]["num_test"] == 16
        fused_model, solo_model = (torch.load(tmp / which / "checkpoints" / "unit" / fused_record["run_name"] / "last.pt",
                                              weights_only=False)["model"] for which in ("fused", "solo"))
        config = fused_record["config"]
        initial = evaluation.build_model(config["model"], config["model_kwargs"], 3, config["seed"]).state_dict()
        updates = [torch.cat([(state[k] - initial[k]).double().flatten() for k in initial if initial[k].ndim])
                   for state in (fused_model, solo_model)]  # what the step changed, parameters and BN statistics
        assert (updates[0] - updates[1]).norm() <= 1e-3 * updates[1].norm()
    assert group[0]["curve"] != group[1]["curve"]  # members are not copies of one another


@pytest.mark.slow
def test_a_member_checkpoint_loads_and_evaluates_alone(group_and_solo, data_root):
    tmp, group, _ = group_and_solo
    record = group[2]  # the NAL member
    path = tmp / "fused" / "checkpoints" / "unit" / record["run_name"] / "last.pt"
    saved, config = evaluation.load_trained(path)
    assert config.model_kwargs == {"residual_attention": False}
    model = ranlib.create_model(config.model, num_classes=3, **config.model_kwargs)
    model.load_state_dict(saved["model"], strict=True)
    with single_thread():
        result = evaluation.evaluate_checkpoint(path, device="cpu", precision="fp32")  # as it was trained
    assert result["top1_error"] == pytest.approx(record["final"]["top1_error"])
    assert result["test_loss"] == pytest.approx(record["final"]["test_loss"], rel=1e-5)


def test_a_group_refuses_members_that_differ_in_more_than_seed_noise_and_arl(tmp_path, data_root):
    base = tiny_config(tmp_path, data_root)
    for other, what in [(dict(model="cifar_attention92"), "model"), (dict(batch_size=8), "batch_size"),
                        (dict(model_kwargs={"attention": "channel"}), "attention")]:
        with pytest.raises(ConfigError, match=what):
            loop.run_group([base, tiny_config(tmp_path, data_root, seed=1, **other)])
    with pytest.raises(ConfigError, match="same run"):
        loop.run_group([base, base])
    for cuda_only in ("conv_autotune", "cuda_graphs"):  # timed with CUDA events / CUDA graphs
        with pytest.raises(ConfigError, match="CUDA"):
            loop.run(tiny_config(tmp_path, data_root, **{cuda_only: True}))
    with pytest.raises(FusionError, match="not a single"):
        fuse([torch.nn.Conv2d(3, 3, 1)] * 2)


def test_a_finished_group_says_so_and_how_to_train_it_again(group_and_solo, data_root):
    tmp, group, _ = group_and_solo
    configs = [tiny_config(tmp / "fused", data_root, seed=0, iterations=1, eval_every=1, precision="fp32"),
               tiny_config(tmp / "fused", data_root, seed=1, noise_level=0.3, iterations=1, eval_every=1,
                           precision="fp32")]  # the group's own runs (their names carry the explicit precision)
    with pytest.raises(ResultsExistError, match="is finished: its results file .* already exists and is kept; "
                                                "give a new training another --run-name") as info:
        loop.run_group(configs)
    assert "--overwrite" not in str(info.value)  # never advise the flag that would destroy it


# --- SIGTERM and resume ----------------------------------------------------------------------------------

GROUP = ("--seeds", "0", "1", "--noise-levels", "0", "0.5")


def _group_cmd(tmp, data_root, *extra: str, members: tuple[str, ...] = GROUP) -> list[str]:
    import sys
    return [sys.executable, "-m", "ranlib", "train", "--model", "cifar_attention56", "--dataset", "folder",
            "--data-root", str(data_root), "--profile", "smoke", "--batch-size", "4", "--iterations", "8",
            "--eval-every", "4", "--checkpoint-every", "100", "--log-every", "1", "--max-train-samples", "24",
            "--max-test-samples", "8", "--device", "cpu", "--no-progress", "--experiment", "group",
            *members, "--results-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "checkpoints"), *extra]


@pytest.mark.slow
def test_a_fused_group_stopped_by_sigterm_resumes_bit_identical(tmp_path, data_root):
    env = subprocess_env()
    reference = subprocess.Popen(_group_cmd(tmp_path / "reference", data_root), env=env, cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cmd = _group_cmd(tmp_path / "stopped", data_root)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    names = [resolve(TrainConfig(model="cifar_attention56", dataset="folder", data_root=str(data_root),
                                             profile="smoke", batch_size=4, iterations=8, max_train_samples=24,
                                             max_test_samples=8, seed=seed, noise_level=noise)).run_name
             for seed in (0, 1) for noise in (0.0, 0.5)]
    metrics = tmp_path / "stopped" / "checkpoints" / "group" / names[0] / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and (
            not metrics.exists() or '"event": "train"' not in metrics.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None, "the group ended before the signal: " + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "and 3 more" in err and "--resume" in err
    stopped_at = {torch.load(tmp_path / "stopped" / "checkpoints" / "group" / n / "last.pt",
                             weights_only=False)["iteration"] for n in names}
    assert len(stopped_at) == 1 and 1 <= stopped_at.pop() < 8
    # a member's checkpoint is a solo run's: it resumes alone too (here from a copy)
    alone = tmp_path / "alone"
    shutil.copytree(tmp_path / "stopped" / "checkpoints" / "group" / names[1],
                    alone / "checkpoints" / "group" / names[1])
    solo = subprocess.run(_group_cmd(alone, data_root, "--resume", members=("--seed", "0", "--noise-level", "0.5")),
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert solo.returncode == 0, solo.stderr
    assert json.loads((alone / "results" / "group" / f"{names[1]}.json").read_text())["provenance"]["resumed"]
    resumed = subprocess.run(cmd + ["--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(resumed.stdout.strip().splitlines()) == 4  # one line per member
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err
    for name in names:
        ref, res = (torch.load(tmp_path / which / "checkpoints" / "group" / name / "last.pt", weights_only=False)
                    for which in ("reference", "stopped"))
        assert ref["iteration"] == res["iteration"] == 8
        for key, tensor in ref["model"].items():
            assert torch.equal(tensor, res["model"][key]), f"{name}: {key} differs after resume"
        for a, b in zip(ref["optimizer"]["state"].values(), res["optimizer"]["state"].values()):
            assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
        records = [json.loads((tmp_path / which / "results" / "group" / f"{name}.json").read_text())
                   for which in ("reference", "stopped")]
        assert records[0]["curve"] == records[1]["curve"]


def test_members_at_different_iterations_do_not_resume_together(tmp_path, data_root):
    with single_thread():
        loop.run(tiny_config(tmp_path, data_root, seed=0, iterations=2))
        members = [tiny_config(tmp_path, data_root, seed=s, iterations=2, resume=True, overwrite=True) for s in (0, 1)]
        with pytest.raises(CheckpointError, match="different iterations"):
            loop.run_group(members)


def test_a_fused_model_with_mask_checkpointing_is_the_same_model(float64):
    members = _members("cifar_attention56", [{}, {"residual_attention": False}])
    plain, checkpointed = fuse(members), fuse(members)
    checkpointed.set_grad_checkpointing(True)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 32, 32, generator=generator)
    y = torch.randint(0, 10, (4, 2), generator=generator)
    for model in (plain, checkpointed):
        TrainStep(model, model, _sgd(model.parameters()), windows=[], precision="fp32")(x, y)
    after = checkpointed.state_dict()
    for key, value in plain.state_dict().items():  # weights and BN statistics (moved once, not twice)
        _assert_same(after[key], value, key)


@pytest.mark.parametrize("kernel,stride", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_every_implementation_of_a_fused_convolution_is_the_same_layer(kernel, stride, float64):
    members = [torch.nn.Sequential(torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=kernel // 2, bias=False))
               for _ in range(3)]
    layer = fuse(members)[0]
    assert isinstance(layer, FusedConv2d) and layer.alternatives() == ("grouped", "bmm" if kernel == 1 else "dense")
    x = torch.randn(2, 18, 9, 9, requires_grad=True)
    outputs = {}
    for impl in layer.alternatives():
        layer.impl = impl
        out = layer(x)
        outputs[impl] = (out, *torch.autograd.grad(out.square().sum(), (x, layer.weight)))
    for mine, reference in zip(outputs[layer.alternatives()[1]], outputs["grouped"]):
        _assert_same(mine, reference, "an alternative implementation")


def test_the_measured_fastest_implementation_is_chosen_per_shape(float64):
    members = _members("cifar_attention56", [{}, {}])
    fused = fuse(members)
    x = torch.randn(2, 6, 32, 32)
    before = fused.eval()(x)
    timed = []

    def time_fn(work):  # a fake clock: the dense and bmm kernels "win" everywhere
        work()
        timed.append(1)
        return 1.0 if len(timed) % 2 else 0.5

    report = choose_conv_impls(fused, x, time_fn)
    layers = [m for m in fused.modules() if isinstance(m, FusedConv2d)]
    assert report["layers"]["grouped"] == 0 and report["layers"]["bmm"] > 0 and report["layers"]["dense"] > 0
    assert sum(report["layers"].values()) == len(layers)  # every fused convolution has an alternative
    assert len(timed) == 2 * len(report["times_s"]) < 2 * len(layers)  # one measurement per shape
    _assert_same(fused(x), before, "the model after the choice")
    assert set(fused.state_dict()) == set(fuse(members).state_dict())
