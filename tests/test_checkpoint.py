"""Checkpoints: atomic writes, every RNG state, clear errors for corrupt or mismatched files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ranlib.errors import CheckpointError
from ranlib.training import checkpoint as ckpt


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    first = _draws()
    ckpt.set_rng_state(state)
    assert _draws() == first
    assert _draws() != first  # the states move on: the test above is not vacuous


def test_save_and_load(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = ckpt.save_checkpoint(tmp_path / "run" / "last.pt", {"model": model.state_dict(), "iteration": 7})
    state = ckpt.load_checkpoint(path)
    assert state["iteration"] == 7 and state["format_version"] == ckpt.FORMAT_VERSION
    assert torch.equal(state["model"]["weight"], model.weight)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "last.pt", {"model": {}, "iteration": 1})

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # as if the process were stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"model": {}, "iteration": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_files_raise_one_clear_error(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a ranlib checkpoint"):
        ckpt.load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ranlib checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_model_mismatch_is_a_checkpoint_error():
    state = torch.nn.Linear(3, 2).state_dict()
    with pytest.raises(CheckpointError, match="does not match the model"):
        ckpt.load_model_state(torch.nn.Linear(4, 2), state, "last.pt")
