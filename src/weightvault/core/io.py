"""File I/O helpers shared by every format: atomic writes and bounded reads.

``atomic_write`` is the only way any writer in weightvault creates a file: it writes to a temporary
name in the same directory, fsyncs, and renames over the destination, so a crash or an exception
leaves either the old file or the new one, never a half-written file under the final name. The
destination is never opened for truncation, which matters because a reader may have it mmapped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from weightvault.errors import TruncatedFileError

__all__ = [
    "TMP_MARK",
    "atomic_dir",
    "atomic_write",
    "fsync_dir",
    "read_exact",
    "remove_tree",
]

#: Marker in the names of temporary files and directories; leftovers carrying it are ours.
TMP_MARK = ".wvtmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a rename inside it survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    f = open(tmp, "xb")  # noqa: SIM115 - closed below on both paths
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name; on success move it to ``path``.

    An existing directory at ``path`` is replaced only after the new one is complete: it is first
    renamed aside, the new one renamed in, and only then the old one deleted. If anything fails the
    old directory stays where it was.
    """
    final = Path(path)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    tmp.mkdir(parents=False)
    try:
        yield tmp
        if fsync:
            fsync_dir(tmp)
        if final.exists():
            aside = final.with_name(f"{final.name}{TMP_MARK}old-{uuid.uuid4().hex[:12]}")
            os.replace(final, aside)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(aside, final)
                raise
            remove_tree(aside)
        else:
            os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        remove_tree(tmp)
        raise


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a file or directory tree if it exists."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def read_exact(f: BinaryIO, n: int, *, path: str | os.PathLike[str], what: str) -> bytes:
    """Read exactly ``n`` bytes or raise :class:`TruncatedFileError` saying what was being read."""
    data = f.read(n)
    if len(data) != n:
        raise TruncatedFileError(
            f"file ends while reading {what}: wanted {n} bytes, got {len(data)}", path=path
        )
    return data
