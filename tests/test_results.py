"""Results files: the schema, validation, never overwriting silently, and the reader."""

from __future__ import annotations

import copy
import json
import os
import stat

import numpy as np
import pytest

from ranlib import files
from ranlib.errors import ResultsExistError, ResultsSchemaError
from ranlib.training import results


def make_record(run_name: str = "run-a", top1: float = 5.5) -> dict:
    """A minimal record that follows schema 1 (what a reader may rely on)."""
    return {
        "schema": 1, "experiment": "table1", "run_name": run_name, "config": {"seed": 0},
        "model": {"name": "cifar_attention56", "kwargs": {}, "params": 1, "macs": 2},
        "dataset": {"name": "folder", "id": "folder:x", "label": "x", "fingerprint": "ab", "num_train": 1,
                    "num_test": 1},
        "noise": None,
        "final": {"top1_error": top1, "top5_error": None, "test_loss": 0.2},
        "curve": [{"iteration": 1, "epoch": 0.1, "lr": 0.1, "train_loss": 1.0, "train_top1_error": 50.0,
                   "test_top1_error": top1}],
        "analysis": {"stage_response": [1.0, 0.5, 0.3]},
        "provenance": {k: None for k in ("git_commit", "git_dirty", "hostname", "device_name", "device_type",
                                         "torch", "cuda", "cudnn", "python", "precision", "seed", "started_at",
                                         "finished_at", "command")},
        "cost": {"wall_time_s": 1.0, "train_time_s": 0.5, "images_per_s": 10.0, "peak_memory_bytes": 1,
                 "device_hours": 0.001},
    }


def test_write_then_load(tmp_path):
    path = results.write_results(make_record(), tmp_path)
    assert path == tmp_path / "table1" / "run-a.json"
    results.write_results(make_record("run-b", 4.0), tmp_path)
    loaded = results.load_results(tmp_path)
    assert [r["run_name"] for r in loaded] == ["run-a", "run-b"]
    assert results.load_results(path)[0]["final"]["top1_error"] == 5.5
    (tmp_path / "performance").mkdir()
    (tmp_path / "performance" / "bench.json").write_text(json.dumps({"benchmark": 1, "model": "x"}))
    assert len(results.load_results(tmp_path)) == 2  # benchmark figures are not run records


def test_never_overwrites_silently(tmp_path):
    results.write_results(make_record(top1=5.5), tmp_path)
    with pytest.raises(ResultsExistError, match="already exists and is kept") as refused:
        results.write_results(make_record(top1=9.9), tmp_path)
    assert "--overwrite" not in str(refused.value)  # never advise the flag that destroys a finished run
    assert results.load_results(tmp_path)[0]["final"]["top1_error"] == 5.5
    results.write_results(make_record(top1=9.9), tmp_path, overwrite=True)
    assert results.load_results(tmp_path)[0]["final"]["top1_error"] == 9.9


@pytest.mark.parametrize("breaks", [
    lambda r: r.pop("final"),
    lambda r: r["final"].pop("top5_error"),
    lambda r: r["provenance"].pop("git_commit"),
    lambda r: r["cost"].pop("device_hours"),
    lambda r: r["curve"][0].pop("test_top1_error"),
    lambda r: r.update(schema=2),
    lambda r: r["final"].update(top1_error=140.0),
    lambda r: r.update(noise={"level": 0.1}),
])
def test_schema_violations_are_caught(tmp_path, breaks):
    record = copy.deepcopy(make_record())
    breaks(record)
    with pytest.raises(ResultsSchemaError):
        results.validate(record)
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ResultsSchemaError, match="bad.json"):
        results.load_results(tmp_path)


def test_non_finite_numbers_become_null(tmp_path):
    record = make_record()
    record["final"]["test_loss"] = float("nan")
    path = results.write_results(record, tmp_path)
    assert json.loads(path.read_text())["final"]["test_loss"] is None


def test_unsafe_names_and_missing_paths(tmp_path):
    with pytest.raises(ResultsSchemaError, match="not a valid name"):
        results.results_path(tmp_path, "../escape", "run")
    with pytest.raises(ResultsSchemaError, match="no results"):
        results.load_results(tmp_path / "nothing-here")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ResultsSchemaError, match="cannot be read as JSON"):
        results.load_results(tmp_path)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_results_and_checkpoints_get_the_mode_the_umask_gives(tmp_path, umask):
    """mkstemp's 0600 used to survive the rename; a shared results folder must be
    readable by the group the umask lets read it."""
    import torch

    from ranlib.data.decode import write_cache
    from ranlib.training import checkpoint

    expected = 0o666 & ~umask
    written = [results.write_results(make_record(), tmp_path / "results"),
               checkpoint.save_checkpoint(tmp_path / "run" / "last.pt", {"model": torch.nn.Linear(2, 2).state_dict()})]
    write_cache(tmp_path / "cache" / "c.npz", "src", {"train_images": np.zeros((1, 32, 32, 3), np.uint8),
                                                        "train_labels": np.zeros(1, np.int64),
                                                        "test_images": np.zeros((1, 32, 32, 3), np.uint8),
                                                        "test_labels": np.zeros(1, np.int64)})
    written.append(tmp_path / "cache" / "c.npz")
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert files.current_umask() == umask
