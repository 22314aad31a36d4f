"""The commit a background campaign trains: a git worktree of it, outside the checkout.

``python -m ranlib.campaign run --detach`` trains the commit the checkout is at, from a detached
``git worktree`` of it in ``<cache>/worktrees/<commit>`` (:func:`ranlib.paths.cache_dir`): the
campaign and every training run with that folder as their working directory and first on
``PYTHONPATH`` (:func:`code_env`), so editing, testing, committing or switching branches in the
checkout changes nothing under a running study, and each results file's provenance names that
commit, clean (:func:`ranlib.training.provenance.git_state` reads the package's own folder).

Uncommitted changes to the code (``ranlib/``, ``pyproject.toml``) would not be in the pinned
commit: :func:`checkout_commit` refuses them in one line. A run keeps the commit it started on:
its folder records it (:func:`record_commit`), and a later campaign resumes its checkpoint from
that commit's worktree (made afresh when the checkout has lost its record of it, as a re-cloned or
restored one has), so one training never mixes two versions of the code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ranlib.errors import RanlibError
from ranlib.paths import cache_dir, source_root
from ranlib.training.checkpoint import CHECKPOINT_NAME

CODE_PATHS = ("ranlib", "pyproject.toml")  # what decides what trains
COMMIT_NAME = "commit"  # beside a run's checkpoint: the commit it started on


def git(*args: str, cwd: Path) -> str:
    """``git args`` in ``cwd``: its output, or one :class:`RanlibError` line with git's reason."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise RanlibError(f"cannot run git ({exc}); the background campaign pins a commit with git") from None
    if out.returncode:
        reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise RanlibError(f"git {' '.join(args)} failed in {cwd}: {reason}")
    return out.stdout.rstrip()  # a status line may begin with a space


def checkout_commit(checkout: Path) -> str:
    """The commit ``checkout`` is at; :class:`RanlibError` outside git, or with uncommitted
    changes to tracked code (they would not be trained)."""
    if not (checkout / ".git").exists():
        raise RanlibError(f"{checkout} is not a git checkout; the background campaign trains a commit (its "
                          "worktree): run it from a clone, or run in the foreground without --detach")
    commit = git("rev-parse", "HEAD", cwd=checkout)
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS, cwd=checkout).splitlines()
    if changed:
        files = [line[3:] for line in changed]
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        raise RanlibError(f"{files[0]}{more} in {checkout} {'have' if more else 'has'} uncommitted changes; the "
                          f"campaign would train "
                          f"commit {commit[:10]} without them: commit them (or git stash) first")
    return commit


def worktree(repo: Path, commit: str) -> Path:
    """``<cache>/worktrees/<commit>``: a detached worktree of ``commit`` of the repository ``repo``
    (any of its worktrees), created when missing, checked to be clean at that commit."""
    path = cache_dir() / "worktrees" / commit
    if _orphaned(path):
        # Its record under repo's .git/worktrees is gone (a re-cloned or restored checkout): git can no longer
        # use the folder. It only ever holds a checkout of the commit, made here, so make it afresh.
        shutil.rmtree(path)
    if not path.exists():
        git("worktree", "prune", cwd=repo)  # forget a worktree folder deleted by hand
        path.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(path), commit, cwd=repo)
    at = git("rev-parse", "HEAD", cwd=path) if (path / ".git").exists() else None
    if at != commit or git("status", "--porcelain", "--untracked-files=no", cwd=path):
        raise RanlibError(f"{path} is not a clean worktree of commit {commit[:10]}; remove it (git worktree remove "
                          f"--force {path}) and start again")
    return path


def _orphaned(path: Path) -> bool:
    """Whether ``path`` is a worktree folder whose record in its repository is gone: its ``.git``
    file reads ``gitdir: <repo>/.git/worktrees/<name>`` and that folder no longer exists."""
    dot_git = path / ".git"
    if not dot_git.is_file():
        return False
    key, _, gitdir = dot_git.read_text().partition(":")
    return key.strip() == "gitdir" and not Path(gitdir.strip()).exists()


def code_env(folder: Path, env: dict | None = None) -> dict:
    """``env`` (default: this process's) with ``folder`` first on ``PYTHONPATH``: ranlib is imported from there."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return env


def resume_commit(folder: Path) -> str | None:
    """The commit a run's checkpoint (in ``folder``) was trained on, if it has a checkpoint and
    its folder says (a run started by a campaign that pinned no commit does not)."""
    path = folder / COMMIT_NAME
    if not (folder / CHECKPOINT_NAME).is_file() or not path.is_file():
        return None
    return path.read_text().strip() or None


def record_commit(folder: Path, commit: str) -> None:
    """Note the commit a run starts on from its first iteration."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMMIT_NAME).write_text(commit + "\n")


def pinned_code(checkout: Path, commit: str, *, say) -> Callable[[list[dict]], tuple[Path, str]]:
    """For a campaign pinned at ``commit`` of ``checkout``: the (worktree, commit) a group trains
    with, for :class:`ranlib.campaign.runner.Campaign`'s ``code_for``. A run resuming a checkpoint keeps
    the commit it started on (``say`` tells when that commit is gone and this one is used); a run
    starting afresh records this one."""
    from .estimates import run_dir

    here = worktree(checkout, commit)
    if source_root() != here:
        raise RanlibError(f"the pinned campaign imported ranlib from {source_root() / 'ranlib'}, not from "
                          f"its worktree {here}; start it with `python -m ranlib.campaign run --detach`")

    def code_for(group: list[dict]) -> tuple[Path, str]:
        folders = [run_dir(config) for config in group]
        older = resume_commit(folders[0])
        if older and older != commit:
            try:
                return worktree(checkout, older), older
            except RanlibError as exc:
                say(f"campaign: {group[0]['run_name']} resumes on commit {commit[:10]}, not on {older[:10]} that "
                    f"it started on ({exc})")
        for folder in folders:
            if not (folder / CHECKPOINT_NAME).is_file():  # from its first iteration on this commit
                record_commit(folder, commit)
        return here, commit

    return code_for
