"""Files written whole or not at all: a temporary file beside the target, flushed to disk, then renamed
over it, and the rename itself flushed.

Checkpoints, run logs, downloads and predictions all go through here, so that a crash, a kill or a
full disk never leaves a torn file where a good one was.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["DISK_FULL", "WriteError", "atomic_write", "atomic_write_path", "free_space", "temporary_files"]

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""The errors of a disk (or quota, or file size limit) with no room left."""


class WriteError(OSError):
    """A file that the system would not let be written (a full disk, a quota, a read-only or failing
    disk); the message names the file, the reason and the room left. The file that was there before,
    if any, is untouched."""

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or os.strerror(error.errno)
        super().__init__(error.errno, reason, str(path))
        room = free_space(path.parent)
        self.message = f"cannot write {path}: {reason}" + (f" ({room})" if room else "")

    def __str__(self) -> str:
        return self.message


def free_space(folder: str | os.PathLike) -> str:
    """How much room the disk of ``folder`` (or of its nearest existing parent) has left, in words."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f"{_size(free)} free on the disk of {folder}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def temporary_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files (``.<name>.<random>.tmp``) that writes into ``folder`` left behind when
    their process was killed: never a whole file, which has its own name."""
    return sorted(p for p in Path(folder).glob(".?*.?*.tmp") if p.is_file())


_PROC_STATUS = "/proc/self/status"


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux 4.7+).

    Elsewhere it is set and restored at once, which another thread creating a file at
    that instant could notice.
    """
    try:
        with open(_PROC_STATUS) as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the system can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows opens no folder; its renames need no such flush
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_path(
    path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = True
) -> Path:
    """Call ``write`` with a temporary file name beside ``path``, flush the file, rename it over ``path``,
    and with ``durable`` flush the rename.

    A crash, a kill or a full disk leaves either the old file or the new one, never a torn one;
    once this returns, a ``durable`` file survives a power cut too (the folder flush costs a journal
    commit: outputs written by the thousand, which a rerun makes again, go without). A failure of the system (an ``OSError``
    with an errno: no room, no permission) raises :class:`WriteError`, which names the file and the
    room left. The file gets the permissions that ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s 0600. For writers that take a file name; :func:`atomic_write` is for those that
    take a file object.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_folder(path.parent)
    except OSError as error:
        if error.errno is None or isinstance(error, WriteError):  # a writer's own error, not the system's
            raise
        raise WriteError(path, error) from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one;
    permissions follow the umask (see :func:`atomic_write_path`).
    """

    def write_file(tmp: Path) -> None:
        with tmp.open("wb") as f:
            write(f)

    return atomic_write_path(path, write_file, durable=durable)
