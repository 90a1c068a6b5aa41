"""Output files (traces, sweeps, exports): one writer at a time, under a temporary name.

A writer holds an exclusive lock on `NAME.lock` while it writes `NAME.partial`, and renames the
partial file to NAME only once it is complete. A second run given the same output refuses with
one line instead of interleaving its writes with the first one's. A write that fails (disk full,
file-size limit, read-only or missing folder) becomes an OutputError with one line; the partial
file, which may then be cut mid-write, is removed.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import resource
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
WRITE_SLACK_BYTES = 64 << 10  # HDF5 metadata written next to the data of one write, at most

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (a file-size limit such as `ulimit -f`)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class OutputError(ValueError):
    """An output that cannot be written; the message is one line: what and how to fix it."""


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def error_number(exc: BaseException) -> int | None:
    """The errno of an OSError, also when HDF5 only spells it in the message ('errno = 28')."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found else None


def write_failure(path: str | os.PathLike, exc: BaseException, note: str = "") -> OutputError:
    """One line for a failed write of `path`: the reason, what to do, and `note` (what is left)."""
    code = error_number(exc) or 0
    reason = _REASONS.get(code) or getattr(exc, "strerror", None)
    if not reason:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
    advice = "free space, or choose another -o/--output" if code in _FULL else "choose another -o/--output"
    return OutputError(f"cannot write {path}: {reason}: {advice}{'; ' + note if note else ''}")


def check_room(path: str | os.PathLike, nbytes: int) -> None:
    """OSError (EFBIG or ENOSPC) if writing `nbytes` more to `path` would pass the file-size
    limit (RLIMIT_FSIZE) or the free space of its file system. Checked before HDF5 starts a write:
    a write that fails inside HDF5 half-way can leave the library in a state that crashes later."""
    path, need = Path(path), nbytes + WRITE_SLACK_BYTES
    size = path.stat().st_size if path.exists() else 0
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size + need > limit:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    stats = os.statvfs(path.parent)
    if need > stats.f_bavail * stats.f_frsize:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class OutputLock:
    """An exclusive, non-blocking lock on NAME.lock for as long as the writer of NAME lives.

    The lock file is removed on release; one left by a killed writer is not locked and is reused."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = lock_path(path)
        self.fd: int | None = None
        while self.fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{self.path}: another run is writing it now ({self.lock} is locked): "
                                  "wait for it to finish or choose another -o/--output") from None
            if self._still_linked(fd):
                self.fd = fd
            else:  # the previous holder removed the file between our open and our lock: retry
                os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_failure(self.path, exc) from None

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self.fd is None:
            return
        self.lock.unlink(missing_ok=True)  # while still held: a waiting writer then retries on a new file
        os.close(self.fd)
        self.fd = None


def is_locked(path: str | os.PathLike) -> bool:
    """Whether a live writer holds the lock of output `path` (a stale lock file is removed)."""
    try:
        OutputLock(path).release()
    except OutputError as exc:
        return "is locked" in str(exc)
    return False


def check_writable(path: str | os.PathLike, create_folders: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written (its folder is missing, is a
    file or is read-only) or that another run is writing now (OutputError, one line). With
    `create_folders`, missing folders are fine if they can be created (nothing is created here)."""
    path = Path(path)
    folder = path.absolute().parent
    existing = folder
    while create_folders and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing.exists() and not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise write_failure(path, exc) from None
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder: choose a file name for -o/--output")
    if existing == folder:
        OutputLock(path).release()


@contextmanager
def exclusive_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield NAME.partial to write, holding NAME's lock; rename it to NAME when the block ends
    without an error, remove it otherwise."""
    lock = OutputLock(path)
    partial = partial_path(path)
    try:
        yield partial
        try:
            os.replace(partial, path)
        except OSError as exc:
            raise write_failure(path, exc) from None
    finally:
        partial.unlink(missing_ok=True)
        lock.release()
