"""The CLI's one error boundary: any exception escaping a command becomes one ``ERROR`` line.

Three kinds of failure reach it:

* a :class:`~weightvault.errors.WeightVaultError`: the library already said which file, which tensor
  and what is wrong (and maybe how to fix it, printed as ``TIP``);
* a foreign exception that a damaged or hostile file provokes in a reader or a library below it
  (``zipfile.BadZipFile``, ``zlib.error``, h5py's ``RuntimeError``, ``KeyError``, ``RecursionError``,
  ``MemoryError``...): readers should translate these, but when one slips through the user still
  gets one line naming the file, never a traceback;
* anything else is a bug of ours, and the line says so.

The traceback is shown only with ``-v`` or ``WEIGHTVAULT_DEBUG=1``.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import click

from weightvault.errors import WeightVaultError

__all__ = ["ErrorLine", "describe", "error_line", "paths_of"]

# Arguments that name the files a command reads; the ERROR line names them when the exception
# does not (a foreign exception knows nothing about our paths).
_PATH_ARGUMENTS = ("path", "paths", "a", "b", "src", "checkpoint", "directory")
_MESSAGE_LIMIT = 300

# Exceptions a malformed file provokes in a parser or decompressor (not bugs of ours).
_UNREADABLE: tuple[type[BaseException], ...] = (
    KeyError,
    IndexError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    OverflowError,
    EOFError,
    UnicodeDecodeError,
    RuntimeError,  # h5py raises plain RuntimeError for broken HDF5 structures
)
_CORRUPT_TIP = "the file may be damaged, truncated or not what its name says; -v shows the traceback"


@dataclass
class ErrorLine:
    """What the boundary prints: one ``ERROR`` line, maybe a ``TIP``."""

    message: str
    tip: str | None = None


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def describe(exc: BaseException) -> str:
    """``zlib.error: invalid stored block lengths``: the exception's type and message, one line."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    text = _one_line(str(exc))
    return f"{name}: {text}" if text else name


def paths_of(ctx: click.Context | None) -> list[str]:
    """The file arguments of the command that ran in ``ctx`` (empty when unknown)."""
    if ctx is None:
        return []
    found: list[str] = []
    for name in _PATH_ARGUMENTS:
        value = ctx.params.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        found += [os.fspath(v) for v in values if isinstance(v, (str, os.PathLike))]
    return found


def _with_paths(paths: Sequence[str], message: str) -> str:
    """``a.h5: message``, unless the message already starts with one of the paths."""
    if not paths or any(message.startswith(p) for p in paths):
        return message
    return f"{', '.join(paths)}: {message}"


def error_line(exc: BaseException, paths: Sequence[str]) -> ErrorLine:
    """The one line (and tip) for an exception that escaped a command reading ``paths``."""
    if isinstance(exc, WeightVaultError):
        message = str(exc) if exc.path is not None else _with_paths(paths, str(exc))
        return ErrorLine(_one_line(message), exc.hint)
    if isinstance(exc, RecursionError):
        return ErrorLine(_with_paths(paths, "nested too deeply to read (RecursionError)"), _CORRUPT_TIP)
    if isinstance(exc, MemoryError):
        return ErrorLine(
            _with_paths(paths, "ran out of memory reading it (MemoryError)"),
            "a header may claim far more data than the file holds; -v shows where",
        )
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return ErrorLine(_one_line(f"{os.fsdecode(exc.filename)}: {exc.strerror}"))
        return ErrorLine(_with_paths(paths, _one_line(str(exc) or describe(exc))))
    if isinstance(exc, NotImplementedError):
        return ErrorLine(_with_paths(paths, f"not supported: {describe(exc)}"))
    if isinstance(exc, _UNREADABLE):
        return ErrorLine(_with_paths(paths, f"cannot read it: {describe(exc)}"), _CORRUPT_TIP)
    if isinstance(exc, (ValueError, TypeError)):
        # Plain errors from below (a bad option value, a malformed array) keep their own words.
        return ErrorLine(_with_paths(paths, _one_line(str(exc)) or describe(exc)))
    return ErrorLine(
        _with_paths(paths, f"internal error ({describe(exc)}); rerun with -v and report it"),
    )
