"""Parameters and multiply-adds (the paper's "FLOPs"), counted by torch.utils.flop_counter, and each
registered model's counts, cached on disk per version of the model code."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ranlib.files import atomic_write
from ranlib.paths import cache_dir

from . import create_model, list_models, model_info


def complexity(model: nn.Module, input_size: int | tuple[int, int], *, in_chans: int = 3) -> dict[str, int]:
    """``{"params", "macs"}`` for one image of ``input_size``.

    Parameters count every learnable tensor (conv, FC with bias, BN scale and shift), as the
    deploy-file counts do. Multiply-adds are half of FlopCounterMode's FLOPs, which covers the
    convolutions and the classifier (pooling, interpolation and element-wise work are not
    counted, as in the paper's figures).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, height, width, device=device))
    finally:
        model.train(was_training)
    return {"params": params, "macs": counter.get_total_flops() // 2}


def _complexity_cache() -> Path:
    """A JSON cache of model counts, keyed by the model code and torch version (counting is slow)."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(__file__).resolve().parent.glob("*.py")):  # the model code, this file included
        digest.update(source.name.encode() + source.read_bytes())
    root = Path(os.environ.get("RANLIB_CACHE_DIR") or cache_dir())
    return root / f"complexity-{digest.hexdigest()[:16]}.json"


def model_counts(name: str, model_kwargs: dict | None = None, *, input_size: int | None = None,
                 use_cache: bool = True) -> dict:
    """Parameters and multiply-adds of a model variant at ``input_size`` (default: its own, 32 or 224).

    Counted on a meta-device model (shapes only) and cached on disk per version of the model
    code, so only the first call pays for counting. A results file counts afresh
    (``use_cache=False``).
    """
    input_size = input_size or model_info(name).input_size
    key = name + (json.dumps(model_kwargs, sort_keys=True) if model_kwargs else "")
    if input_size != model_info(name).input_size:
        key += f"@{input_size}"
    cache_path = _complexity_cache()
    try:
        cache = json.loads(cache_path.read_text()) if use_cache else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    with torch.device("meta"):  # shapes only: counting needs no real weights
        model = create_model(name, **(model_kwargs or {}))
    counts = complexity(model, input_size)
    counts = {"params": int(counts["params"]), "macs": int(counts["macs"])}
    if use_cache:
        try:
            with atomic_write(cache_path, "w") as f:
                f.write(json.dumps({**cache, key: counts}))
        except OSError:  # a read-only home: count again next time
            pass
    return counts


def model_table(names: list[str] | None = None, dataset: str | None = None, *, use_cache: bool = True) -> list[dict]:
    """One row per model: name, dataset, paper name, params, multiply-adds at its input size."""
    rows = []
    for name in names or list_models(dataset):
        info = model_info(name)
        if dataset and info.dataset != dataset:
            continue
        rows.append({"name": name, "dataset": info.dataset, "paper_name": info.paper_name,
                     "input_size": info.input_size, "test_size": info.test_size,
                     **model_counts(name, use_cache=use_cache)})
    return rows
