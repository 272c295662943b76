"""Files written whole or not at all: a temporary file beside the target, flushed, then renamed over it.

Checkpoints, run logs, downloads and predictions all go through here, so that a crash or a full
disk never leaves a torn file where a good one was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_path"]

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


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write`` with a temporary file name beside ``path``, flush the file, rename it over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one. The file
    gets the permissions that ``open`` would give it (0666 less the umask), not ``mkstemp``'s 0600.
    For writers that take a file name; :func:`atomic_write` is for those that take a file object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(Path(tmp))
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or a full disk leaves either the old file or the new one, never a torn one;
    permissions follow the umask (see :func:`atomic_write_path`).
    """

    def write_file(tmp: Path) -> None:
        with tmp.open("wb") as f:
            write(f)

    return atomic_write_path(path, write_file)
