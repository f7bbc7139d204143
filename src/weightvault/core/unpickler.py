"""A restricted unpickler: reads pickles without importing or calling anything we did not allow.

Why ``find_class`` is the single choke point
--------------------------------------------
A pickle can only reach code through a *global*: the opcodes GLOBAL, STACK_GLOBAL, INST, OBJ and
EXT1/EXT2/EXT4 all resolve a ``(module, name)`` pair, and both CPython implementations (the C
``_pickle.Unpickler`` and the pure-Python ``pickle._Unpickler``) route every one of them through
``self.find_class(module, name)`` when a subclass overrides it. REDUCE, NEWOBJ, NEWOBJ_EX and BUILD
then call or mutate only objects already on the stack, and the only callables that can get onto the
stack are the ones ``find_class`` returned (or ``persistent_load``, which we own too). So:

* ``find_class`` returns *stand-ins we wrote* from the ``allowed`` mapping — never the real
  importable object — and raises :class:`~weightvault.errors.UnsafePickleError` for anything else,
  before anything is imported;
* persistent ids (BINPERSID / PERSID, how PyTorch refers to storages) go to the caller's
  ``persistent_load``; without one they are refused;
* BUILD on a stand-in instance calls its ``__setstate__`` or updates its ``__dict__``; stand-ins are
  plain classes we control, so this runs none of the file's code.

EXT opcodes look names up in ``copyreg``'s extension registry and then go through ``find_class``
as well, so they are covered. Protocol-2 pickles written by Python 3 name ``__builtin__`` and other
Python-2 module names; since overriding ``find_class`` bypasses the ``fix_imports`` mapping, we
apply ``_compat_pickle``'s mapping ourselves before the allowlist lookup.

Allowlists are ``{(module, name): callable}``. :data:`BASE_ALLOWED` holds safe stand-ins for plain
containers and numbers that every format may reuse; a format adds its own entries (PyTorch adds the
tensor rebuild functions) with ``{**BASE_ALLOWED, **mine}``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from weightvault.errors import CorruptFileError, InvalidHeaderError, UnsafePickleError

__all__ = [
    "BASE_ALLOWED",
    "OrderedDict",
    "RestrictedUnpickler",
    "safe_unpickle",
]


class OrderedDict(collections.OrderedDict):  # type: ignore[type-arg]
    """Stand-in for ``collections.OrderedDict``.

    A subclass (not the real class) so that BUILD may attach attributes, as PyTorch does with
    ``state_dict()._metadata``; those land in ``__dict__`` and never call file-chosen code.
    """


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol 2 pickles ``bytes`` as ``encode(str, 'latin1')``."""
    if not isinstance(obj, str) or not isinstance(encoding, str) or not isinstance(errors, str):
        raise UnsafePickleError("_codecs.encode called with non-string arguments")
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591", "utf8", "ascii"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode(encoding, errors)


def _bytearray(*args: Any) -> bytearray:
    if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray, str, list))):
        raise UnsafePickleError("bytearray() called with unexpected arguments")
    if args and isinstance(args[0], str):
        return bytearray(args[0], "latin1")  # how protocol 2 pickles a bytearray
    return bytearray(*args)


def _plain(fn: Callable[..., Any], *types: type) -> Callable[..., Any]:
    """Wrap a builtin so it only accepts plain data (no calling into arbitrary objects)."""

    def call(*args: Any) -> Any:
        for a in args:
            if not isinstance(a, (*types, int, float, complex, str, bytes, tuple, list, set, frozenset, type(None))):
                raise UnsafePickleError(f"{fn.__name__}() called with a {type(a).__name__}")
        return fn(*args)

    call.__name__ = fn.__name__
    return call


#: Stand-ins for plain Python containers and numbers; safe for every format.
BASE_ALLOWED: Mapping[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset),
    ("builtins", "slice"): _plain(slice),
    ("builtins", "complex"): _plain(complex),
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "range"): _plain(range),
    ("_codecs", "encode"): _codecs_encode,
}


def _map_py2_name(module: str, name: str) -> tuple[str, str]:
    """Apply the Python-2 → 3 name mapping that ``fix_imports`` would have applied."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from ``allowed`` (see the module docstring)."""

    def __init__(
        self,
        file: BinaryIO,
        *,
        allowed: Mapping[tuple[str, str], Callable[..., Any]],
        persistent_load: Callable[[Any], Any] | None = None,
        path: str | None = None,
        what: str = "pickle",
        encoding: str = "ASCII",
        refuse: Callable[[str, str], UnsafePickleError] | None = None,
    ) -> None:
        super().__init__(file, encoding=encoding, errors="strict")
        self._allowed = allowed
        self._persistent = persistent_load
        self._path = path
        self._what = what
        self._refuse = refuse

    def find_class(self, module: str, name: str) -> Any:
        key = _map_py2_name(module, name)
        stand_in = self._allowed.get(key)
        if stand_in is None:
            if self._refuse is not None:
                raise self._refuse(module, name)
            raise UnsafePickleError(
                f"{self._what} refers to {module}.{name}, which is not on the allowlist of safe "
                "globals; nothing was imported or executed",
                path=self._path,
                hint="open the file with its own framework only if you trust its source, and re-save "
                "the weights as plain tensors (a state dict) to convert them",
            )
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(
                f"{self._what} uses a persistent id ({_short(pid)}) but this format allows none",
                path=self._path,
            )
        return self._persistent(pid)


def _short(obj: Any, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_unpickle(
    data: bytes | bytearray | memoryview | BinaryIO,
    *,
    allowed: Mapping[tuple[str, str], Callable[..., Any]],
    persistent_load: Callable[[Any], Any] | None = None,
    path: str | os.PathLike[str] | None = None,
    what: str = "pickle",
    encoding: str = "ASCII",
    refuse: Callable[[str, str], UnsafePickleError] | None = None,
) -> Any:
    """Unpickle ``data`` (bytes or a binary file positioned at the pickle) with an allowlist.

    Raises :class:`UnsafePickleError` for any global outside ``allowed`` and
    :class:`InvalidHeaderError` for a pickle that is malformed or truncated (every failure of the
    pickle machinery itself becomes a :class:`CorruptFileError` naming ``path`` and ``what``).
    ``encoding`` is passed to the unpickler for Python-2 ``str`` objects (``"latin1"``/``"bytes"``).
    ``refuse(module, name)`` may build a format-specific error for a refused global (it is raised,
    never called with anything from the file but the two names).
    """
    spath = os.fspath(path) if path is not None else None
    file: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    unpickler = RestrictedUnpickler(
        file,
        allowed=allowed,
        persistent_load=persistent_load,
        path=spath,
        what=what,
        encoding=encoding,
        refuse=refuse,
    )
    try:
        return unpickler.load()
    except CorruptFileError:
        raise
    except RecursionError:
        raise InvalidHeaderError(f"{what} is nested too deeply to read", path=spath) from None
    except MemoryError:
        raise InvalidHeaderError(f"{what} asks for more memory than is available", path=spath) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError, OverflowError) as exc:
        # Errors raised by pickle's own machinery (bad opcode, truncated stream, memo miss) or by a
        # stand-in rejecting its arguments: the file is corrupt; nothing foreign ran.
        raise InvalidHeaderError(f"{what} is not a valid pickle: {type(exc).__name__}: {exc}", path=spath) from None
