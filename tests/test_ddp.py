"""torchrun + DDP on CPU (gloo, 2 processes) against one process with the same global batch.

Batch norm under DDP normalises each process's slice with its own statistics (per-process BN, as
Caffe's multi-GPU training and Goyal et al. do); the running statistics are averaged over processes
after each step. One process computes exactly that with ``--accum-steps 2`` (two micro-batches, each
with its own BN statistics, gradients averaged, running statistics averaged), so the two runs must
agree within float tolerance. A one-process run without micro-batches (BN over all 8 images) is a
different computation and must not agree: that shows the comparison can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from test_train import REPO, TINY_MODEL, make_folder_dataset, subprocess_env


def _cmd(tmp, data_root, run_name, *extra):
    return ["-m", "ranlib", "train", "--model", TINY_MODEL, "--dataset", "folder", "--data-root", str(data_root),
            "--profile", "smoke", "--batch-size", "8", "--iterations", "3", "--eval-every", "3",
            "--max-train-samples", "32", "--max-test-samples", "8", "--device", "cpu", "--no-progress",
            "--experiment", "ddp", "--run-name", run_name, "--results-dir", str(tmp / "results"),
            "--checkpoint-dir", str(tmp / "checkpoints"), *extra]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data_root = make_folder_dataset(tmp_path / "data", n_train=32, n_test=8)
    env = subprocess_env()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    procs = {
        "ddp": subprocess.Popen(torchrun + _cmd(tmp_path, data_root, "ddp"), env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "single": subprocess.Popen([sys.executable] + _cmd(tmp_path, data_root, "single", "--accum-steps", "2"),
                                   env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "global_bn": subprocess.Popen([sys.executable] + _cmd(tmp_path, data_root, "global_bn"), env=env,
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"

    def final(name):
        return torch.load(tmp_path / "checkpoints" / "ddp" / name / "last.pt", weights_only=False)

    ddp, single, global_bn = final("ddp"), final("single"), final("global_bn")
    assert ddp["iteration"] == single["iteration"] == 3
    assert ddp["model"].keys() == single["model"].keys()
    for name, tensor in ddp["model"].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, single["model"][name], rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(tensor, single["model"][name]), name
    for a, b in zip(ddp["optimizer"]["state"].values(), single["optimizer"]["state"].values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-4, atol=1e-5)

    differs = [name for name, t in global_bn["model"].items()
               if t.is_floating_point() and not torch.allclose(t, single["model"][name], rtol=1e-4, atol=1e-5)]
    assert differs, "BN over the whole batch gave the same weights: the comparison above would not catch anything"

    records = {n: json.loads((tmp_path / "results" / "ddp" / f"{n}.json").read_text()) for n in ("ddp", "single")}
    assert records["ddp"]["provenance"]["world_size"] == 2 and records["single"]["provenance"]["world_size"] == 1
    assert records["ddp"]["curve"][-1]["train_loss"] == pytest.approx(records["single"]["curve"][-1]["train_loss"],
                                                                      rel=1e-4)
    assert records["ddp"]["final"]["test_loss"] == pytest.approx(records["single"]["final"]["test_loss"], rel=1e-3)
