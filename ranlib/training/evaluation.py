"""Evaluation: building a run's model, its test-set errors, and loading and evaluating trained checkpoints.

This module builds a model from the registry as every run builds it (:func:`build_model`), measures
the top-1/top-5 error and loss of a plain or fused model on a test split, sharded over processes
(:func:`evaluate_members`, :func:`evaluate`), and reads back what ``ranlib train`` wrote: a
checkpoint's configuration and trained model (:func:`load_trained`, :func:`trained_model`) and its
errors on a dataset's test split (:func:`evaluate_checkpoint`, ``ranlib eval``).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn as nn

from ranlib.errors import CheckpointError, ConfigError
from ranlib.models.fused import shared_inputs
from ranlib.options import check_all

from . import checkpoint as ckpt
from . import provenance
from .config import TRAIN_OPTIONS, TrainConfig, check_dataset
from .runtime import Dist, all_reduce, autocast, resolve_precision, select_device
from .splits import load_split
from .step import member_losses

TOP5_MIN_CLASSES = 100  # top-5 error is reported for CIFAR-100 and ImageNet, not for 10 classes


def build_model(name: str, model_kwargs: dict, num_classes: int, seed: int) -> nn.Module:
    """The registry's model, initialised from ``seed`` (same weights on every process)."""
    import ranlib
    torch.manual_seed(seed)
    try:
        return ranlib.create_model(name, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError) as exc:  # a switch value the model rejects
        raise ConfigError(f"model {name} with options {model_kwargs}: {exc}") from None


@torch.no_grad()
def evaluate_members(model: nn.Module, batches, device: torch.device, precision: str, d: Dist = Dist(), *,
                     members: int = 1, topk: int = 5) -> list[dict]:
    """Per member: top-1/top-k error (%), mean loss and the number of images evaluated.

    ``model`` is a plain model (logits ``(B, O)``) or a fused one of ``members`` members (logits
    ``(B, K, O)``; every member sees the same test images). Batches are sharded over processes
    and the sums reduced, so ``count`` is the number of test images evaluated in all. The top-k
    error (key ``top5_error``) is None below :data:`TOP5_MIN_CLASSES` classes, here and so in every
    record made from it (the learning curve and the final figures say the same).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(members, 4, dtype=torch.float64, device=device)  # loss, top-1, top-k hits, count
    classes = 0
    for x, y in batches:
        x, y = x.tensor_split(d.world_size)[d.rank], y.tensor_split(d.world_size)[d.rank]
        if not len(y):
            continue
        with autocast(device, precision):
            logits = model(shared_inputs(x, members))
        logits = logits.float()
        if logits.ndim == 2:
            logits = logits[:, None]
        classes = logits.shape[-1]
        hits = logits.topk(min(topk, logits.shape[-1]), dim=-1).indices.eq(y[:, None, None])  # (B, K, k)
        losses = member_losses(logits, y[:, None].expand(-1, members))
        seen = torch.full((members,), float(len(y)), dtype=torch.float64, device=device)
        sums += torch.stack([losses.double().sum(0), hits[..., 0].sum(0).double(), hits.any(-1).sum(0).double(),
                             seen], dim=1)
    model.train(was_training)
    results = []
    for loss, top1, topk_hits, count in all_reduce(sums, d).tolist():
        n = max(count, 1.0)
        results.append({"top1_error": 100.0 * (1 - top1 / n),
                        "top5_error": 100.0 * (1 - topk_hits / n) if classes >= TOP5_MIN_CLASSES else None,
                        "loss": loss / n, "count": int(count)})
    return results


def evaluate(model: nn.Module, batches, device: torch.device, precision: str, d: Dist = Dist(),
             topk: int = 5) -> dict:
    """Top-1/top-k error (%), mean loss and the count evaluated of one plain model over ``batches``."""
    return evaluate_members(model, batches, device, precision, d, members=1, topk=topk)[0]


# --------------------------------------------------------------------------------------------
# Evaluating a checkpoint
# --------------------------------------------------------------------------------------------

def evaluate_checkpoint(path: str | os.PathLike, *, dataset: str | None = None, data_root: str | None = None,
                        device: str = "auto", batch_size: int = 256, precision: str = "auto",
                        max_test_samples: int | None = None, test_size: int | None = None) -> dict:
    """Top-1/top-5 error of a checkpoint's model on a dataset's test split."""
    check_all(dict(device=device, batch_size=batch_size, max_test_samples=max_test_samples, test_size=test_size),
              TRAIN_OPTIONS)
    saved, trained = load_trained(path)
    c = dataclasses.replace(trained, dataset=dataset or trained.dataset, data_root=data_root or trained.data_root,
                            max_test_samples=max_test_samples, max_train_samples=None, noise_level=0.0,
                            test_size=test_size or trained.test_size, run_name=trained.run_name, profile=trained.profile)
    info = check_dataset(c.model, c.dataset)
    dev = select_device(device, Dist())
    prec = resolve_precision(precision, dev)
    c.channels_last = True
    split = load_split([c], dev, info.input_size, Dist(), train=False, eval_batch_size=batch_size,
                       mean=saved.get("data_mean"))
    num_classes = saved.get("num_classes") or _num_classes_of(saved["model"])
    if num_classes is not None and num_classes != split.num_classes:
        raise CheckpointError(f"checkpoint {path} predicts {num_classes} classes but {c.dataset} has "
                              f"{split.num_classes}; evaluate it on the dataset it was trained for")
    model = trained_model(saved, trained, split.num_classes, path)
    model = model.to(dev, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    result = evaluate(model, split.test, dev, prec)
    return {"checkpoint": str(path), "model": c.model, "model_kwargs": c.model_kwargs,
            "iteration": saved.get("iteration"), "dataset": split.info, "num_test": result["count"],
            "top1_error": result["top1_error"],
            "top5_error": result["top5_error"],
            "test_loss": result["loss"],
            "provenance": provenance.collect(dev, precision=prec, seed=c.seed)}


def load_trained(path: str | os.PathLike) -> tuple[dict, TrainConfig]:
    """A checkpoint written by ``ranlib train`` and the configuration it was trained with."""
    saved = ckpt.load_checkpoint(path, map_location="cpu")
    if "config" not in saved:
        raise CheckpointError(f"{path} holds no training configuration; it was not written by ranlib train")
    return saved, TrainConfig.from_dict(saved["config"])


def trained_model(saved: dict, trained: TrainConfig, num_classes: int, path: str | os.PathLike) -> nn.Module:
    """The checkpoint's model with its trained weights (on the CPU)."""
    model = build_model(trained.model, trained.model_kwargs, num_classes, 0)
    ckpt.load_model_state(model, saved["model"], path)
    return model


def _num_classes_of(state_dict: dict) -> int | None:
    """Rows of the last 2-D weight (the classifier) in a state dict."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None
