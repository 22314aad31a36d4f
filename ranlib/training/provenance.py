"""Where a number came from: code version, machine, library versions, time.

Every results file and benchmark file carries :func:`collect`'s dictionary so a number
in the book can be traced to a commit, a device and a command line.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from ranlib.paths import source_root

_REPO_ROOT = source_root()


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str | None, bool | None]:
    """(commit hash, dirty flag) of the ranlib checkout, or (None, None) outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status) if status is not None else None


def cpu_name() -> str:
    """The CPU model string (from /proc/cpuinfo on Linux), else platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """The GPU name for a CUDA device, the CPU model otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def gpu_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def command_line() -> str:
    """The command that started this process, as one string: ``python -m ranlib.bench ...`` for a
    package run with ``-m`` (the module from ``__main__``'s spec)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name.removesuffix(".__main__") if spec is not None and spec.name else "ranlib"
        argv[0] = f"python -m {module}"
    return " ".join(argv)


def collect(device: torch.device | str, *, precision: str | None = None, seed: int | None = None,
            started_at: str | None = None) -> dict:
    """The provenance block of the results schema (``finished_at`` is filled in now)."""
    device = torch.device(device)
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "device_name": device_name(device),
        "device_type": device.type,
        "device_count": torch.cuda.device_count() if device.type == "cuda" else os.cpu_count(),
        "gpu_driver": gpu_driver() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "precision": precision,
        "seed": seed,
        "started_at": started_at or utc_now(),
        "finished_at": utc_now(),
        "command": command_line(),
    }
