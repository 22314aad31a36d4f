"""Files written safely: replaced atomically with the modes the umask gives, and a folder locked while
one process works in it (:class:`FolderLock`).

A results file, a checkpoint or a decode cache is written to a temporary file in the same folder,
flushed to disk and moved over the old one with ``os.replace`` (atomic on POSIX), so a process
killed mid-write leaves the previous file intact. ``tempfile.mkstemp`` creates its file with mode
0600, which a rename keeps; :func:`atomic_write` gives the file the mode an ordinary ``open``
would (0666 less the umask), so the group that reads a shared results folder can read it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: ...`` writes ``f`` to a temporary file beside ``path``, then
    fsyncs it and moves it over ``path``; on any error the temporary file is removed and ``path``
    stays as it was. The file's mode is 0666 less the umask, as ``open`` gives. Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderLock:
    """An exclusive lock on a folder while one process works in it: ``fcntl.flock`` on
    ``<folder>/.lock``, which holds the holder's pid and host for the message a second process gets.

    ``with FolderLock(folder, "run unit/x"):`` creates the folder if needed and raises
    :class:`ranlib.errors.RunLockedError` at once if another process holds the lock, or
    :class:`ranlib.errors.StorageError` if the folder cannot be written. The kernel drops the lock
    when the holder exits, however it ends; the lock file stays (removing it would race a waiter).
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path, self.what, self._file = Path(folder) / self.NAME, what, None

    def __enter__(self) -> "FolderLock":
        import fcntl
        import socket

        from .errors import RunLockedError, StorageError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as exc:
            raise StorageError(f"cannot write in {self.path.parent} ({exc.strerror or exc}); make it writable or "
                               "choose another --checkpoint-dir") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.what} is being trained by {holder} (lock {self.path}); wait for it to "
                                 "finish or stop it, or give this run another --run-name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def check_writable(folder: str | os.PathLike, remedy: str) -> None:
    """Raise one :class:`ranlib.errors.StorageError` line ending in ``remedy`` unless files can be
    written in ``folder``: a real write of a temporary file in it, or in the first folder above it
    that exists (which creating it would write in; nothing is left behind), since permission bits
    do not tell (root writes through them; a read-only mount refuses everyone)."""
    from .errors import StorageError

    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise StorageError(f"cannot write in {folder} ({exc.strerror or exc}); {remedy}") from None


def check_free_space(folder: str | os.PathLike, needed: int, what: str, remedy: str) -> None:
    """Raise one :class:`ranlib.errors.StorageError` line if ``folder``'s file system has fewer than
    ``needed`` bytes free (``what`` says what needs them)."""
    import shutil

    from .errors import StorageError

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StorageError(f"{folder} has {free / 2**20:,.0f} MiB free but {what} needs about "
                           f"{needed / 2**20:,.0f} MiB; {remedy}")
