"""The study's figures (seaborn) and the long-format frames they draw.

Learning curves, Table 5 as error vs label noise, Figure 4's stage responses, the injected
label noise, and Figure 1's idea: the soft masks of a trained checkpoint on test images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ranlib.paths import resolve_path

from . import paper
from .experiments import MODEL_LABELS, experiment
from .labels import device_text, record_budget, record_profile
from .report import normalised_responses


def curves_frame(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Learning curves of every run of a known row, long format for seaborn."""
    exp = experiment(name)
    lines = []
    for row, record in exp.runs_of(records):
        for point in record["curve"]:
            for what in ("train_top1_error", "test_top1_error"):
                if point.get(what) is not None:
                    lines.append(dict(row=row.label, run=record["run_name"],
                                      seed=record["provenance"].get("seed"),
                                      profile=record_profile(record), iteration=point["iteration"],
                                      split=what.split("_")[0], error=point[what]))
    return pd.DataFrame(lines, columns=["row", "run", "seed", "profile", "iteration", "split",
                                        "error"])


def _legend_outside(ax) -> None:
    """The legend right of the axes, off the data."""
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)


def _caption(records: Sequence[dict]) -> str:
    """The budget, device, precision and data of the runs a figure draws, for its title."""
    budgets = sorted({record_budget(r) for r in records})
    where = sorted({f"{device_text(r)}, {r['provenance'].get('precision') or '?'}" for r in records})
    data = sorted({r["dataset"]["label"] for r in records})
    return "; ".join(["; ".join(budgets), "; ".join(where), "; ".join(data)])


def plot_learning_curves(name: str, records: Sequence[dict], ax=None):
    """Train and test top-1 error vs iteration, one colour per row, with the paper's final error of
    each row as a dotted line of its colour; a band (± sd over seeds) only where a row has >= 2
    seeds; the legend off the data. None (nothing drawn) when there are no curves."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    exp = experiment(name)
    frame = curves_frame(name, records)
    if frame.empty:
        return None
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    labels = list(dict.fromkeys(frame["row"]))
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels))))
    # Seaborn's sd of a single seed is undefined, so a row with one seed draws no band.
    several = bool((frame.groupby("row")["seed"].nunique() >= 2).any())
    sns.lineplot(frame, x="iteration", y="error", hue="row", style="split", palette=palette,
                 errorbar="sd" if several else None, ax=ax)
    for row in exp.rows:
        if row.label in palette and row.paper_error is not None:
            ax.axhline(row.paper_error, color=palette[row.label], linestyle=":", linewidth=1.2,
                       label=f"paper, {row.label} (final)")
    ax.set(ylabel="top-1 error (%)")
    ax.set_title(f"{exp.title}: learning curves\n{_caption([r for _, r in exp.runs_of(records)])}", fontsize=9)
    _legend_outside(ax)
    return ax


def plot_error_vs_noise(records: Sequence[dict], ax=None):
    """Table 5 as a plot: final error vs label-noise level, ours (mean ± sd) and the paper's."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    exp = experiment("label_noise")
    lines = [dict(model=MODEL_LABELS[r.model], noise=100 * r.noise_level, error=r.paper_error,
                  source="paper") for r in exp.rows]
    for row, record in exp.runs_of(records):
        lines.append(dict(model=MODEL_LABELS[row.model], noise=100 * row.noise_level,
                          error=record["final"]["top1_error"], source=f"ours ({record_budget(record)})"))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(pd.DataFrame(lines), x="noise", y="error", hue="model", style="source",
                 markers=True, errorbar="sd", ax=ax)
    ax.set(xlabel="label noise (%)", ylabel="top-1 test error (%)",
           title="Error vs label noise (Table 5)")
    _legend_outside(ax)
    return ax


def responses_frame(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Figure 4's curves, ours per run and the paper's read-off values, long format; ``network``
    names the depth and budget of ours (the paper's figure is Attention-164)."""
    exp = experiment(name)
    lines = [dict(network=f"{label} (paper)", stage=i + 1, response=v, source="paper", run="paper")
             for label, curve in paper.FIGURE4_STAGE_RESPONSE.items()
             for i, v in enumerate(curve)]
    for row, record in exp.runs_of(records):
        curve = normalised_responses(record)
        if curve is None:
            continue
        lines += [dict(network=f"{row.label} (ours, {record_profile(record)})", stage=i + 1, response=v,
                       source=f"ours ({record_budget(record)})", run=record["run_name"])
                  for i, v in enumerate(curve)]
    return pd.DataFrame(lines, columns=["network", "stage", "response", "source", "run"])


def responses_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`responses_frame` as a table: one line per curve (mean over seeds), a column per stage."""
    table = frame.pivot_table(index=["network", "source"], columns="stage", values="response", sort=False)
    return table.rename(columns=lambda stage: f"stage {stage}").reset_index()


def plot_stage_responses(name: str, records: Sequence[dict], ax=None):
    """Figure 4: mean absolute response per stage normalised to stage 1 (log scale): the paper's
    Attention-164 and ResNet-164 curves, and ours for every row we trained (mean ± sd over seeds)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = responses_frame(name, records)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(frame, x="stage", y="response", hue="network", style="source", markers=True,
                 errorbar="sd", ax=ax)
    ours = [r for _, r in experiment(name).runs_of(records) if normalised_responses(r) is not None]
    title = "Stage responses (Figure 4): the paper's from Attention-164"
    if ours:
        title += f"\nours: {_caption(ours)}"
    ax.set(yscale="log", xticks=sorted(frame["stage"].unique()), ylabel="mean |response| / stage 1")
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    return ax


NOISE_FORMATS = {"requested": "{:.0%}", "achieved": "{:.2%}"}  # flip rates as the book prints them


def noise_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Requested vs achieved label-noise rate of every label-noise run."""
    lines = [dict(run=r["run_name"], network=MODEL_LABELS.get(r["model"]["name"], r["model"]["name"]),
                  level=r["noise"]["level"], achieved_rate=r["noise"]["achieved_rate"], seed=r["noise"]["seed"])
             for r in records if r.get("noise")]
    return pd.DataFrame(lines, columns=["run", "network", "level", "achieved_rate", "seed"])


def plot_transition_matrix(record: dict, ax=None):
    """The empirical transition matrix (row = true label, column = noisy label) of one run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    matrix = np.asarray(record["noise"]["transition_matrix"], dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    sns.heatmap(matrix, annot=matrix.shape[0] <= 10, fmt=".2f", cmap="viridis", vmin=0, vmax=1,
                ax=ax)
    ax.set(xlabel="noisy label", ylabel="true label",
           title=f"{record['run_name']}: achieved noise {record['noise']['achieved_rate']:.1%}")
    return ax


def plot_masks(images: np.ndarray, masks: dict, *, max_images: int = 4):
    """Figure 1's idea: each test image, then each attention module's soft mask (mean over
    channels, upsampled to the image size), stage by stage.

    ``images``: uint8 N,H,W,3; ``masks``: module name -> tensor N,C,h,w (or N,1,h,w).
    """
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    n = min(max_images, len(images))
    names = list(masks)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.7 * n),
                             squeeze=False)
    size = images.shape[1:3]
    for i in range(n):
        axes[i, 0].imshow(images[i])
        for j, module in enumerate(names, start=1):
            mask = torch.as_tensor(masks[module][i:i + 1]).float().mean(dim=1, keepdim=True)
            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)[0, 0]
            # Each panel is scaled to its own range (printed under it), so structure shows even
            # where a mask is nearly flat.
            axes[i, j].imshow(mask.numpy(), cmap="magma")
            axes[i, j].text(0.5, -0.08, f"{mask.min():.2f}–{mask.max():.2f}", fontsize=6,
                            ha="center", va="top", transform=axes[i, j].transAxes)
            if i == 0:
                axes[i, j].set_title(module, fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def checkpoint_masks(path: str | os.PathLike, *, num_images: int = 4, device: str = "auto",
                     data_root: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """The first ``num_images`` test images (uint8 NHWC) of a checkpoint's dataset and its model's
    soft masks on them (:func:`ranlib.models.analysis.capture_masks`), normalised as in training.

    CIFAR checkpoints: the first test images. Imagewoof checkpoints: the first validation image of
    each breed in turn (one per class up to 10), at the run's test crop, un-normalised for display.
    """
    import dataclasses

    from ranlib.data import cifar as data
    from ranlib.training.checkpoint import load_checkpoint
    from ranlib.training.config import TrainConfig, resolve
    from ranlib.training.runtime import Dist, select_device
    from ranlib.training.splits import load_cifar_split

    path = resolve_path(path)
    saved = load_checkpoint(path)
    config = resolve(TrainConfig.from_dict(saved["config"]))
    if data_root is not None:
        config = dataclasses.replace(config, data_root=str(resolve_path(data_root)))
    config = dataclasses.replace(config, channels_last=False, noise_level=0.0)
    dev = select_device(device, Dist())
    if config.dataset == "imagewoof":
        return _imagewoof_masks(path, saved, config, dev, num_images)
    split = load_cifar_split([config], dev, 32, train=False)
    x = split.fixed_batch[:num_images]
    masks = _trained_masks(path, saved, config, split.num_classes, x)
    images = data.load_arrays(config.dataset, config.data_root).test_images[:len(x)]
    return images, masks


def _trained_masks(path, saved: dict, config, num_classes: int, x) -> dict:
    """Every attention module's soft mask on ``x`` of the checkpoint's trained model."""
    import torch

    from ranlib.models import analysis
    from ranlib.training.evaluation import trained_model

    model = trained_model(saved, config, num_classes, path).to(x.device).eval()
    with torch.no_grad():
        return {k: v.float().cpu() for k, v in analysis.capture_masks(model, x).items()}


def _imagewoof_masks(path, saved: dict, config, dev, num_images: int) -> tuple[np.ndarray, dict]:
    import torch

    from ranlib.data.folders import IMAGENET_MEAN, IMAGENET_STD
    from ranlib.data.imagewoof import load_imagewoof_split

    # A class-balanced subset: the file is sorted by breed, so its first images are all one dog.
    split = load_imagewoof_split(config.data_root, device=dev, input_size=config.train_size,
                                 test_size=config.test_size, batch_size=num_images, seeds=[],
                                 channels_last=False, max_test_samples=num_images, train=False)
    x = split.fixed_batch[:num_images]
    masks = _trained_masks(path, saved, config, split.num_classes, x)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    pixels = ((x.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy(), masks


def latest_checkpoint(checkpoint_dir: str | os.PathLike, records: Sequence[dict], *,
                      model: str | None = None) -> Path | None:
    """The ``last.pt`` of the most recent run in ``records`` (of ``model`` only, if given) that has
    one; runs at a larger budget first (quick before smoke). None when there is none."""
    from ranlib.training.checkpoint import CHECKPOINT_NAME

    from .verdicts import PROFILE_RANK

    def order(record):
        return (PROFILE_RANK.get(record_profile(record), -1), record["provenance"].get("finished_at") or "")

    for record in sorted(records, key=order, reverse=True):
        if model is not None and record["model"]["name"] != model:
            continue
        path = (resolve_path(checkpoint_dir) / record["experiment"] / record["run_name"]
                / CHECKPOINT_NAME)
        if path.is_file():
            return path
    return None


def write_masks(path: str | os.PathLike, images: np.ndarray, masks: dict, *, source: str = "") -> Path:
    """Keep a masks figure's data (images, channel-mean masks) as a small ``.npz`` so that the book
    shows it from committed results, without the checkpoint (hundreds of MB) it came from."""
    import torch

    path = resolve_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"mask_{i}": torch.as_tensor(m).float().mean(dim=1, keepdim=True).numpy().astype(np.float32)
              for i, m in enumerate(masks.values())}
    np.savez_compressed(path, images=np.asarray(images, dtype=np.uint8), names=np.array(list(masks)),
                        source=np.array(source), **arrays)
    return path


def read_masks(path: str | os.PathLike) -> tuple[np.ndarray, dict, str] | None:
    """``(images, masks, source)`` from :func:`write_masks`' file; None when it does not exist."""
    path = resolve_path(path)
    if not path.is_file():
        return None
    from ranlib.data.decode import read_npz

    pack = read_npz(path, ("names", "images", "source"), "masks (ranlib.study.plots.write_masks)")
    names = [str(n) for n in pack["names"]]
    return pack["images"], {n: pack[f"mask_{i}"] for i, n in enumerate(names)}, str(pack["source"])


def write_checkpoint_masks(checkpoint: str | os.PathLike, path: str | os.PathLike, *, num_images: int = 4,
                           device: str = "auto") -> Path:
    """:func:`checkpoint_masks` of ``checkpoint`` written to ``path`` (:func:`write_masks`): run it
    where the checkpoint is (the GPU machine) and bring the small file back."""
    images, masks = checkpoint_masks(checkpoint, num_images=num_images, device=device)
    checkpoint = resolve_path(checkpoint)
    source = f"{checkpoint.parent.parent.name}/{checkpoint.parent.name}"
    return write_masks(path, images, masks, source=source)


CIFAR_MASKS_CHECKPOINT = "checkpoints/attention_types/attention56-mixed-quick-s0/last.pt"
# The masks figures' data files, under <results>/attention_masks/ (the masks chapter reads them).
CIFAR_MASKS_NAME = "cifar_attention56_masks.npz"
WOOF_MASKS_NAME = "imagewoof_attention56_masks.npz"


def masks_command(masks_file: str, checkpoint: str = CIFAR_MASKS_CHECKPOINT) -> str:
    """The command that writes a trained CIFAR Attention-56's masks figure data to ``masks_file``."""
    return (f"python -c \"from ranlib.study import plots; plots.write_checkpoint_masks('{checkpoint}', "
            f"'{masks_file}')\"")


def masks_label(source: str, records: Sequence[dict]) -> str:
    """Where a kept masks figure comes from (``source`` = ``experiment/run``): the run's budget,
    device, precision and data, read from its results record; ``"its run has no results here"``."""
    for r in records:
        if f"{r['experiment']}/{r['run_name']}" == source:
            return (f"{record_budget(r)}; {device_text(r)}, {r['provenance'].get('precision') or '?'}; "
                    f"{r['dataset']['label']}")
    return "its run has no results file here"
