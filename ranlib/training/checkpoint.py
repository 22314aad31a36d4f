"""Checkpoints that survive a kill at any moment, and every random state needed to resume.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder
and moved over the old one with ``os.replace`` (atomic on POSIX), so a process killed
mid-write leaves the previous checkpoint intact. It holds the model, optimizer, scheduler,
the data position, all RNG states (python, numpy, torch CPU, every CUDA device) and the
learning-curve records so far; a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranlib.errors import CheckpointError
from ranlib.files import atomic_write

FORMAT_VERSION = 1
CHECKPOINT_NAME = "last.pt"


def rng_state() -> dict:
    """Every global random state a training step can touch."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (:func:`ranlib.files.atomic_write`: temp file in the
    same folder, fsync, rename; the mode the umask gives)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`CheckpointError`.

    ``weights_only=False`` because the payload holds RNG states (numpy's is a tuple with an
    array); only load checkpoints you wrote yourself.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path, or train first)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, AttributeError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a ranlib checkpoint ({reason}); "
                              "delete it or point to another file") from None
    if not isinstance(state, dict) or "model" not in state or "format_version" not in state:
        raise CheckpointError(f"{path} is not a ranlib checkpoint (no model/format_version entry)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, this ranlib "
                              f"reads format {FORMAT_VERSION}")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str | os.PathLike) -> None:
    """``model.load_state_dict`` with a one-line :class:`CheckpointError` on any mismatch."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {source} does not match the model ({first}); "
                              "use the same --model and model options it was trained with") from None
