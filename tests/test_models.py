"""The model zoo: registry, every model builds and trains a step, faithfulness to the paper and
the official deploy files, and each switch does what the paper says."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import ranlib
import ranlib.models
from ranlib.models import UnknownModelError
from ranlib.models.analysis import capture_masks, stage_responses
from ranlib.models.attention import AttentionFusion, AttentionModule, EncoderDecoderMask, LocalMask, MaskActivation
from ranlib.models.choices import OPEN_CHOICES
from ranlib.models.units import fan_in_std
from ranlib.study import paper

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((ROOT / "tests" / "data" / "official_deploy_specs.json").read_text())
PROTOTXT_DIR = ROOT.parent / "shared" / "paper" / "official-prototxt"

ISSUE_NAMES = {
    "attention56", "attention92", "attentionnext56", "attentioninception56", "resnet152", "resnet200", "resnext101",
    "cifar_attention56", "cifar_attention92", "cifar_attention128", "cifar_attention164", "cifar_attention236",
    "cifar_attention452", "cifar_resnet164", "cifar_resnet1001", "cifar_wrn16_8", "cifar_wrn28_10",
}
ATTENTION_MODELS = [n for n in ranlib.list_models() if ranlib.model_info(n).is_attention]


def _small_input(name: str, batch: int = 2) -> torch.Tensor:
    # ImageNet models are exercised at 64x64: every layer runs, at a fraction of 224's cost.
    size = 32 if ranlib.model_info(name).dataset == "cifar" else 64
    return torch.randn(batch, 3, size, size)


def _meta_model(name: str, **variant) -> nn.Module:
    """The model on the meta device: shapes only, no weights to initialise."""
    with torch.device("meta"):
        return ranlib.create_model(name, **variant)


def _count(name: str, input_size: int | None = None, **variant) -> dict[str, int]:
    return ranlib.complexity(_meta_model(name, **variant), input_size or ranlib.model_info(name).input_size)


def _params(name: str) -> int:
    return sum(p.numel() for p in _meta_model(name).parameters())


def _convs(model: nn.Module) -> Counter:
    return Counter(
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.groups, m.bias is not None)
        for m in model.modules() if isinstance(m, nn.Conv2d)
    )


def _units_outside_masks(module: nn.Module) -> int:
    """Residual units on the trunk path: everything but the attention modules' mask branches."""
    count = 0
    for name, child in module.named_children():
        if name in ("mask", "mask_head"):
            continue
        if hasattr(child, "preact"):
            count += 1
        else:
            count += _units_outside_masks(child)
    return count


# --- registry -------------------------------------------------------------------------------------

def test_registry_holds_every_network_of_the_paper():
    assert set(ranlib.list_models()) == ISSUE_NAMES
    assert set(ranlib.list_models("cifar")) == {n for n in ISSUE_NAMES if n.startswith("cifar_")}


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(UnknownModelError, match="cifar_attention92") as info:
        ranlib.create_model("attention57")
    assert "unknown model 'attention57'" in str(info.value)


def test_unknown_switch_is_one_clear_error():
    with pytest.raises(ValueError, match="cifar_resnet164 does not take attention"):
        ranlib.create_model("cifar_resnet164", attention="mixed")
    with pytest.raises(ValueError, match="attention must be one of mixed, channel, spatial"):
        ranlib.create_model("cifar_attention56", attention="temporal")
    with pytest.raises(ValueError, match="mask must be one of"):
        ranlib.create_model("cifar_attention56", mask="unet")


def _wrong_values(option) -> list:
    """Values of the wrong type (and out of range) for a declared switch: what a command line, a
    group file or papermill could hand over."""
    by_kind = {bool: ["no", "off", "n", "false", 0, 1, None], str: [1, True, None, "nope"],
               int: ["2", 2.0, True, None]}
    wrong = list(by_kind[option.kind])
    if option.minimum is not None:
        wrong.append(int(option.minimum) - 1)
    return wrong


SWITCH_CASES = [(name, switch, value) for name in ranlib.list_models()
                for switch, option in ranlib.models.model_switches(name).items() for value in _wrong_values(option)]


@pytest.mark.parametrize("name, switch, value", SWITCH_CASES,
                         ids=[f"{n}-{s}-{v!r}" for n, s, v in SWITCH_CASES])
def test_every_model_switch_rejects_a_value_of_the_wrong_type(name, switch, value):
    """residual_attention="no" once built ARL (bool("no") is True) under a NAL name."""
    with pytest.raises(ValueError, match=f"{name} switch {switch} must be .*, not {re.escape(repr(value))}"):
        ranlib.create_model(name, **{switch: value})


def test_every_switch_declares_its_type():
    for name in ranlib.list_models():
        assert set(ranlib.models.model_switches(name)) == set(ranlib.model_variants(name)), name
    assert len(SWITCH_CASES) > 100  # every attention network's six switches
    nal = ranlib.create_model("cifar_attention56", residual_attention=False)
    assert not nal.stages[0][1].fusion.residual_attention  # the declared type still takes a real bool


# --- every registered model: builds, runs forward and backward ------------------------------------

@pytest.mark.parametrize("name", ranlib.list_models())
def test_every_model_trains_one_step(name):
    model = ranlib.create_model(name, num_classes=7)
    x = _small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.equal(model.forward_head(model.forward_features(x)), model(x))
    assert len(model.stage_modules()) == (3 if ranlib.model_info(name).dataset == "cifar" else 4)


@pytest.mark.parametrize("attention", ["mixed", "channel", "spatial"])
@pytest.mark.parametrize("residual_attention", [True, False])
@pytest.mark.parametrize("mask", ["encoder_decoder", "local"])
def test_every_switch_combination_trains(attention, residual_attention, mask):
    for name in ("cifar_attention56", "attention56"):
        model = ranlib.create_model(name, attention=attention, residual_attention=residual_attention, mask=mask)
        out = model(_small_input(name))
        out.sum().backward()
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["attention92", "attentionnext56", "attentioninception56", "cifar_attention128",
                                  "cifar_attention164", "cifar_attention236"])
def test_other_attention_models_take_the_switches(name):
    model = ranlib.create_model(name, attention="spatial", residual_attention=False, mask="local", p=1, t=1, r=2)
    model(_small_input(name)).sum().backward()


# --- faithfulness to the official deploy files ----------------------------------------------------

@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_same_convolutions_as_the_deploy_file(name):
    model = _meta_model(name)
    official = Counter({tuple(row[:7]): row[7] for row in OFFICIAL[name]["convs"]})
    assert sum(official.values()) == OFFICIAL[name]["num_convs"]
    assert _convs(model) == official
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_same_parameters_and_multiply_adds_as_the_deploy_file(name):
    counts = _count(name, 224)
    assert counts["params"] == OFFICIAL[name]["params"]
    assert counts["macs"] == pytest.approx(OFFICIAL[name]["macs"], rel=0.01)
    assert OFFICIAL[name]["params"] == pytest.approx(paper.OFFICIAL_DEPLOY[name]["params"], rel=0.002)


@pytest.mark.skipif(not PROTOTXT_DIR.is_dir(), reason="the official deploy files are not beside this checkout")
def test_derived_specs_are_in_sync_with_the_deploy_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive", ROOT / "tools" / "derive_official_specs.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    for name, stem in derive.NETWORKS.items():
        assert derive.derive(PROTOTXT_DIR / f"{stem}-deploy.prototxt") == OFFICIAL[name]


def test_mask_adds_only_the_skip_unit_at_each_resolution():
    """The up path at each level is interp(coarser) + skip_unit(down features): recompute it by hand."""
    torch.manual_seed(0)
    mask = EncoderDecoderMask(ranlib.models.units.PreActBottleneck, 64, pools=3, r=1).eval()
    x = torch.randn(1, 64, 32, 32)
    up = lambda t, like: nn.functional.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=True)
    with torch.no_grad():
        d1 = mask.down[0](mask.pool(x))
        d2 = mask.down[1](mask.pool(d1))
        d3 = mask.down[2](mask.pool(d2))
        u2 = mask.up[1](up(d3, d2) + mask.skips[1](d2))
        u1 = mask.up[0](up(u2, d1) + mask.skips[0](d1))
        expected = up(u1, x)
        assert torch.allclose(mask(x), expected, atol=1e-5)
    assert [d.shape[-1] for d in (d1, d2, d3)] == [16, 8, 4]
    assert [len(d) for d in mask.down] == [1, 1, 2]


# --- CIFAR networks against the paper -------------------------------------------------------------

CIFAR_MODULES = {"cifar_attention56": 1, "cifar_attention92": 2, "cifar_attention128": 3, "cifar_attention164": 4,
                 "cifar_attention236": 6, "cifar_attention452": 6}


@pytest.mark.parametrize("name,m", sorted(CIFAR_MODULES.items()))
def test_cifar_attention_depth_and_modules_per_stage(name, m):
    model = ranlib.create_model(name)
    per_stage = [sum(isinstance(b, AttentionModule) for b in stage) for stage in model.stages]
    assert per_stage == [m, m, m]
    depth = int(name.removeprefix("cifar_attention"))
    # stem conv + 3 convolutions per trunk unit + classifier
    assert 1 + 3 * _units_outside_masks(model.stages) + 1 == depth
    module = model.stages[0][1]
    expected_ptr = (2, 4, 3) if name == "cifar_attention452" else (1, 2, 1)
    assert (len(module.pre), len(module.trunk), len(module.mask.up[0])) == expected_ptr


@pytest.mark.parametrize("name,tolerance", [
    ("cifar_attention92", 0.10), ("cifar_attention236", 0.10), ("cifar_attention452", 0.10),
    ("cifar_resnet164", 0.05), ("cifar_resnet1001", 0.05), ("cifar_wrn16_8", 0.05), ("cifar_wrn28_10", 0.05),
])
def test_cifar_parameters_near_the_paper(name, tolerance):
    params = _params(name)
    assert params / 1e6 == pytest.approx(paper.TABLE6_CIFAR[name][0], rel=tolerance)


@pytest.mark.parametrize("name", ["resnet152", "resnet200", "resnext101"])
def test_imagenet_baselines_near_the_paper(name):
    counts = _count(name, 224)
    row = paper.TABLE7_IMAGENET[name]
    assert counts["params"] / 1e6 == pytest.approx(row["params"], rel=0.05)
    assert counts["macs"] / 1e9 == pytest.approx(row["gflops"], rel=0.05)


# --- each switch changes what it should -----------------------------------------------------------

def _module_parts(module: AttentionModule, x: torch.Tensor):
    with torch.no_grad():
        pre = module.pre(x)
        return module.trunk(pre), module.mask_head(module.mask(pre))


@pytest.mark.parametrize("residual_attention", [True, False])
def test_residual_attention_switch_fuses_as_eq3_or_naive(residual_attention):
    model = ranlib.create_model("cifar_attention56", residual_attention=residual_attention).eval()
    module = model.stages[0][1]
    x = torch.randn(2, 64, 32, 32)
    trunk, mask = _module_parts(module, x)
    with torch.no_grad():
        fused = module.fusion(trunk, mask)
        assert torch.allclose(module(x), module.post(fused))
    expected = (1 + mask) * trunk if residual_attention else mask * trunk
    assert torch.allclose(fused, expected, atol=1e-6)


def test_attention_types_follow_table1():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 5, 5) * 3
    mixed, channel, spatial = (MaskActivation(kind)(z) for kind in ("mixed", "channel", "spatial"))
    assert torch.equal(mixed, torch.sigmoid(z))
    # f2: unit L2 norm over the channels at every position
    assert torch.allclose(channel.norm(dim=1), torch.ones(2, 5, 5), atol=1e-4)
    # f3: sigmoid of a per-channel standardisation over space -> logit has mean 0 and std 1 per channel
    logit = torch.logit(spatial.double())
    assert torch.allclose(logit.mean(dim=(2, 3)), torch.zeros(2, 8, dtype=torch.double), atol=1e-4)
    assert torch.allclose(logit.std(dim=(2, 3), correction=0), torch.ones(2, 8, dtype=torch.double), atol=1e-3)
    for kind in ("mixed", "channel", "spatial"):
        model = ranlib.create_model("cifar_attention56", attention=kind)
        activations = {m.attention for m in model.modules() if isinstance(m, MaskActivation)}
        assert activations == {kind}


def test_local_mask_has_no_resampling_and_the_same_flops():
    local = ranlib.create_model("cifar_attention56", mask="local")
    for stage in local.stages:
        mask = stage[1].mask
        assert isinstance(mask, LocalMask) and len(mask) == 3
        assert not any(isinstance(m, nn.MaxPool2d) for m in mask.modules())
    ed_macs, local_macs = _count("cifar_attention56")["macs"], _count("cifar_attention56", mask="local")["macs"]
    assert local_macs == pytest.approx(ed_macs, rel=0.02)
    assert local_macs != ed_macs  # a different network, not the same one renamed


def test_p_t_r_set_the_unit_counts():
    model = ranlib.create_model("cifar_attention56", p=2, t=3, r=2)
    module = model.stages[0][1]
    assert (len(module.pre), len(module.trunk), len(module.post)) == (2, 3, 2)
    assert [len(d) for d in module.mask.down] == [2, 2, 3]  # r, r, r + 1 at the coarsest level
    assert [len(u) for u in module.mask.up] == [2, 2]
    with pytest.raises(ValueError, match="switch t must be an integer >= 1, not 0"):
        ranlib.create_model("cifar_attention56", t=0)


# --- precision, memory layout, initialisation -----------------------------------------------------

def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = ranlib.create_model("cifar_attention56").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out_cl, reference, atol=1e-4, rtol=1e-4)
    assert out_bf16.dtype == torch.bfloat16
    assert torch.allclose(out_bf16.float(), reference, atol=0.1 * reference.abs().max().item())


def test_he_initialisation():
    torch.manual_seed(0)
    model = ranlib.create_model("cifar_wrn16_8")
    conv = max((m for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda m: m.weight.numel())
    assert conv.weight.std().item() == pytest.approx(fan_in_std(conv), rel=0.02)
    assert conv.weight.mean().abs().item() < 0.01 * fan_in_std(conv)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    tv = ranlib.create_model("resnet152")  # torchvision baselines get the same initialisation
    assert tv.conv1.weight.std().item() == pytest.approx(fan_in_std(tv.conv1), rel=0.05)


# --- complexity and analysis ----------------------------------------------------------------------

def test_complexity_counts_a_known_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 16, 5))
    counts = ranlib.complexity(net, (4, 4))
    assert counts["params"] == 3 * 8 * 9 + 2 * 8 + 8 * 16 * 5 + 5
    assert counts["macs"] == 3 * 8 * 9 * 16 + 8 * 16 * 5
    assert net.training  # the mode is restored


def test_stage_responses_and_masks_leave_no_hooks():
    model = ranlib.create_model("cifar_attention56")
    x = torch.randn(2, 3, 32, 32)
    responses = stage_responses(model, x)
    assert len(responses) == 3 and all(r > 0 for r in responses)
    masks = capture_masks(model, x)
    assert list(masks) == ["stages.0.1", "stages.1.1", "stages.2.1"]
    assert masks["stages.1.1"].shape == (2, 128, 16, 16)
    first_mask = masks["stages.0.1"]
    assert ((first_mask >= 0) & (first_mask <= 1)).all() and first_mask.std() > 0
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    # the captured stage output is the one the model computes
    with torch.no_grad():
        model.eval()
        first = model.stages[0](model.stem(x))
    assert responses[0] == pytest.approx(first.abs().mean().item(), rel=1e-5)


def test_resnet_has_stage_responses_for_figure4():
    assert len(stage_responses(ranlib.create_model("cifar_resnet164"), torch.randn(2, 3, 32, 32))) == 3


def test_open_choices_state_true_facts():
    topics = {c["topic"] for c in OPEN_CHOICES}
    assert {"CIFAR network widths", "Mask pooling levels at 32/16/8 (CIFAR)", "Channel attention f2 epsilon",
            "Local-convolution mask (Table 4)", "The Inception unit (AttentionInception-56)"} <= topics
    assert all(set(c) == {"topic", "paper_says", "we_chose", "why"} for c in OPEN_CHOICES)
    params = {n: _params(n) / 1e6 for n in ("cifar_attention92", "cifar_attention236", "cifar_attention452")}
    text = " ".join(c["why"] for c in OPEN_CHOICES)
    for value in params.values():
        assert f"{value:.2f}M" in text
    assert [s.mask_pools for s in ranlib.create_model("cifar_attention56").stage_specs] == [3, 2, 1]
    assert math.isclose(EncoderDecoderMask.full_resolution_units(1, 1), 2 / 4)


def test_mask_checkpointing_gives_the_same_step_and_the_same_model():
    import copy

    torch.manual_seed(0)
    plain = ranlib.create_model("cifar_attention56")
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert all(m.checkpoint_mask for m in checkpointed.modules() if isinstance(m, AttentionModule))
    x = torch.randn(4, 3, 32, 32)
    for model in (plain, checkpointed):
        model(x).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    # running statistics moved once, as without checkpointing (the recomputation does not count)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_compiled_mask_checkpointing_is_the_compiled_plain_model():
    """Under torch.compile the recomputation is part of the compiled backward graph (the eager
    path's BN bookkeeping cannot be traced): same gradients, running statistics moved once."""
    import copy

    from ranlib.models.units import UNITS

    torch.manual_seed(0)
    plain = AttentionModule(UNITS["preact"], 16, pools=1, p=1, t=1, r=1, attention="mixed",
                            residual_attention=True, mask="encoder_decoder").train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_mask = True
    x = torch.randn(4, 16, 8, 8)
    for model in (plain, checkpointed):
        torch.compile(model, backend="aot_eager")(x).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), name
