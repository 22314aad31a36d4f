"""Where the study's paths point: relative paths are taken from the repository root.

Every path parameter of the study (``results_dir``, ``data_root``, checkpoints) goes through
:func:`resolve_path`: an absolute path is used as given; a relative one is taken relative to
the repository root, the first folder at or above the current directory that holds
``pyproject.toml`` (so ``"results"`` means ``<repo>/results`` whether papermill runs the
notebook from the repo root or from ``notebooks/``). Outside a checkout the current
directory is used.
"""

from __future__ import annotations

import os
from pathlib import Path


def source_root() -> Path:
    """The folder that holds the imported ranlib package: the checkout or worktree its code comes
    from (the git commit a results file records), or site-packages when installed."""
    return Path(__file__).resolve().parent.parent


def repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The first folder at or above ``start`` (default: the current directory) holding
    ``pyproject.toml``, or None outside a checkout."""
    here = Path(start or Path.cwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), None)


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """An absolute path as given; a relative one under ``root`` (default :func:`repo_root`,
    else the current directory)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = Path(root) if root is not None else (repo_root() or Path.cwd())
    return (base / path).resolve()


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """How a page shows ``path``: relative to the repository root (default :func:`repo_root`)
    when it lies inside it, else only its last part, ``…/name`` (absolute paths of the machine
    that built a page never reach the book)."""
    path = Path(path)
    base = Path(root) if root is not None else repo_root()
    if not path.is_absolute():
        return path.as_posix()
    if base is not None:
        try:
            return path.resolve().relative_to(Path(base).resolve()).as_posix() or "."
        except ValueError:
            pass
    return f"…/{path.name}"


def cache_dir() -> Path:
    """ranlib's folder in the user's cache (the XDG base directory rule): ``$XDG_CACHE_HOME/ranlib``,
    else ``~/.cache/ranlib``. It outlives any checkout: the background campaign keeps its pinned
    worktrees, checkpoints, state and log there (:mod:`ranlib.campaign.background`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ranlib"
