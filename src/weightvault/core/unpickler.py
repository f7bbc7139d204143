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
* BUILD may only fill in an *instance* of a stand-in class that this load returned: it calls the
  class's own ``__setstate__`` or, without one, puts string keys into the instance's ``__dict__``.
  BUILD on a class, a function or a marker (which would ``setattr`` on an object shared by every
  reader in the process, e.g. ``OrderedDict.__setitem__ = set``) and slot state are refused, and
  stand-in classes are immutable anyway (:class:`StandInMeta`).

The opcodes run on the pure-Python ``pickle._Unpickler`` rather than the C one: its memo is a dict
(the C memo is an array sized by the largest index, so a 9-byte pickle with ``LONG_BINPUT 2**27``
costs 2 GiB), each opcode can be checked (BUILD, MARK nesting), and every read is bounded by the
bytes actually present, so no length field makes it allocate. Weight pickles are small (names,
shapes and storage keys), so the slower loop costs little. After loading, the object graph is
walked once, without recursion: cycles, nesting past :data:`~weightvault.core.limits.MAX_NESTING`
and graphs whose shared children describe a tree too large to walk are refused, so callers may walk
the result recursively.

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
import reprlib
import struct
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, ClassVar

from weightvault.core.limits import check_depth
from weightvault.errors import (
    CorruptFileError,
    InvalidHeaderError,
    ResourceLimitError,
    UnsafePickleError,
    WeightVaultError,
)

__all__ = [
    "BASE_ALLOWED",
    "DCP_METADATA_ALLOWED",
    "OrderedDict",
    "RestrictedUnpickler",
    "StandInMeta",
    "safe_unpickle",
    "short_repr",
]

#: the object a pickle unpacks to may be walked at most this many nodes (counting a shared child
#: once per path to it), or 8 per pickle byte when that is more; a few KB of BINGETs can otherwise
#: describe a tree with 2**600 paths
MIN_TREE_NODES = 1_000_000
TREE_NODES_PER_BYTE = 8


class StandInMeta(type):
    """Metaclass of stand-in classes: their attributes cannot be set or deleted after creation.

    Stand-ins are shared by every reader in the process, so a pickle must not be able to change
    them (BUILD on a class object with slot state is a ``setattr`` on the class); instances stay
    mutable, and BUILD on them is checked by :meth:`RestrictedUnpickler.load_build`.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafePickleError(
            f"refusing to set attribute {name!r} on the stand-in class {cls.__name__}"
        )

    def __delattr__(cls, name: str) -> None:
        raise UnsafePickleError(
            f"refusing to delete attribute {name!r} of the stand-in class {cls.__name__}"
        )


class OrderedDict(collections.OrderedDict, metaclass=StandInMeta):  # type: ignore[type-arg]
    """Stand-in for ``collections.OrderedDict``.

    A subclass (not the real class) so that BUILD may attach attributes to an *instance*, as
    PyTorch does with ``state_dict()._metadata``; those land in the instance's ``__dict__`` and
    never call file-chosen code. The class itself is immutable (see :class:`StandInMeta`).
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


# -- torch.distributed.checkpoint metadata ----------------------------------------------------------
# A DCP ``.metadata`` file is a pickle of dataclasses from torch.distributed.checkpoint. These are
# plain stand-ins with the same field names, filled by BUILD (a dict of attributes) or, for
# TensorProperties, by its own ``__setstate__`` (a tuple); the format checks every field's type
# afterwards. Nothing from torch is imported. Dtypes (``torch.float32``...) are added by the
# format, which knows the dtype table, as :class:`TorchDtype` markers.


class _DCPRecord(metaclass=StandInMeta):
    """Base of the DCP stand-ins; their fields are whatever BUILD put in ``vars(self)``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={short_repr(v, 40)}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class DCPMetadata(_DCPRecord):
    """Stand-in for ``torch.distributed.checkpoint.metadata.Metadata``."""


class DCPTensorStorageMetadata(_DCPRecord):
    """Stand-in for ``TensorStorageMetadata`` (properties, size, chunks)."""


class DCPBytesStorageMetadata(_DCPRecord):
    """Stand-in for ``BytesStorageMetadata`` (no fields)."""


class DCPChunkStorageMetadata(_DCPRecord):
    """Stand-in for ``ChunkStorageMetadata`` (offsets, sizes)."""


class DCPMetadataIndex(_DCPRecord):
    """Stand-in for ``MetadataIndex`` (fqn, offset, index); identity-hashed, used as a dict key."""


class DCPStorageInfo(_DCPRecord):
    """Stand-in for ``torch.distributed.checkpoint.filesystem._StorageInfo``
    (relative_path, offset, length, transform_descriptors)."""


class DCPStorageMeta(_DCPRecord):
    """Stand-in for ``StorageMeta`` (checkpoint_id, save_id, load_id, modules)."""


class DCPTensorProperties(_DCPRecord):
    """Stand-in for ``TensorProperties``: its pickled state is the tuple
    (dtype, layout, requires_grad, memory format code, pin_memory)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickleError(f"TensorProperties state {short_repr(state)} is not a 5-tuple")
        names = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")
        self.__dict__.update(zip(names, state, strict=True))


class TorchDtype(metaclass=StandInMeta):
    """Marker for a ``torch.<dtype>`` global (``torch.float32``): only its name is kept."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _dcp_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size(dims)``: a tuple of ints."""
    if not isinstance(dims, (tuple, list)) or not all(type(d) is int for d in dims):
        raise UnsafePickleError(f"torch.Size called with {short_repr(dims)}")
    return tuple(dims)


def _dcp_layout(name: Any) -> str:
    """``torch.serialization._get_layout("torch.strided")``: the layout's name."""
    if not isinstance(name, str):
        raise UnsafePickleError(f"_get_layout called with {short_repr(name)}")
    return name


def _dcp_mem_format(code: Any) -> int:
    """``_MEM_FORMAT_ENCODING(n)``: the enum's integer value."""
    if type(code) is not int:
        raise UnsafePickleError(f"_MEM_FORMAT_ENCODING called with {short_repr(code)}")
    return code


def _dcp_path(*parts: Any) -> str:
    """``pathlib.PosixPath(*parts)`` (StorageMeta.checkpoint_id): the joined string."""
    if not all(isinstance(p, str) for p in parts):
        raise UnsafePickleError("a path built from something that is not a string")
    return "/".join(parts).replace("//", "/")


_DCP = "torch.distributed.checkpoint.metadata"
#: Stand-ins for what a torch.distributed.checkpoint ``.metadata`` pickle names (add dtypes and
#: :data:`BASE_ALLOWED`); the real classes are never imported.
DCP_METADATA_ALLOWED: Mapping[tuple[str, str], Callable[..., Any]] = {
    (_DCP, "Metadata"): DCPMetadata,
    (_DCP, "TensorStorageMetadata"): DCPTensorStorageMetadata,
    (_DCP, "BytesStorageMetadata"): DCPBytesStorageMetadata,
    (_DCP, "ChunkStorageMetadata"): DCPChunkStorageMetadata,
    (_DCP, "MetadataIndex"): DCPMetadataIndex,
    (_DCP, "TensorProperties"): DCPTensorProperties,
    (_DCP, "StorageMeta"): DCPStorageMeta,
    (_DCP, "_MEM_FORMAT_ENCODING"): _dcp_mem_format,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): DCPStorageInfo,
    ("torch", "Size"): _dcp_size,
    ("torch.serialization", "_get_layout"): _dcp_layout,
    ("pathlib", "PosixPath"): _dcp_path,
    ("pathlib", "PurePosixPath"): _dcp_path,
    ("pathlib", "WindowsPath"): _dcp_path,
    ("pathlib", "PureWindowsPath"): _dcp_path,
}


def _map_py2_name(module: str, name: str) -> tuple[str, str]:
    """Apply the Python-2 → 3 name mapping that ``fix_imports`` would have applied."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _BoundedReader:
    """A file view that never reads (or lets the unpickler allocate) past the bytes present.

    For pickles read from a file (the legacy torch stream): ``BufferedReader.read(n)`` allocates
    ``n`` bytes before reading, so a read asking for more than remains raises ``EOFError`` first,
    and a length field of 2**40 in a 20-byte pickle costs nothing. In-memory pickles are read from
    a ``BytesIO``, which never returns more than it holds.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.start = file.tell()
        self._end = file.seek(0, io.SEEK_END)
        file.seek(self.start)

    def remaining(self) -> int:
        return self._end - self._file.tell()

    def read(self, n: int = -1) -> bytes:
        left = self.remaining()
        if n is None or n < 0:
            n = left
        if n > left:
            raise EOFError(f"the pickle asks for {n} bytes but only {left} remain")
        return self._file.read(n)

    def readinto(self, buf: Any) -> int:
        n = memoryview(buf).nbytes
        if n > self.remaining():
            raise EOFError(f"the pickle asks for {n} bytes but only {self.remaining()} remain")
        return self._file.readinto(buf)  # type: ignore[attr-defined, no-any-return]

    def readline(self) -> bytes:
        return self._file.readline(self.remaining())


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined, misc]
    """``pickle._Unpickler`` whose globals come only from ``allowed`` (see the module docstring)."""

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(
        pickle._Unpickler.dispatch  # type: ignore[attr-defined]
    )

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
        # A BytesIO never returns (or allocates) more than it holds, and a short read ends the
        # stream, so the next opcode fails; a real file needs the bound.
        reader = file if isinstance(file, (io.BytesIO, _BoundedReader)) else _BoundedReader(file)
        self._source = reader
        super().__init__(reader, encoding=encoding, errors="strict")
        self._allowed = allowed
        self._persistent = persistent_load
        self._path = path
        self._what = what
        self._refuse = refuse
        self._classes: set[int] = set()  # ids of stand-in classes returned by find_class

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
        if isinstance(stand_in, type):
            self._classes.add(id(stand_in))
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(
                f"{self._what} uses a persistent id ({short_repr(pid)}) but this format allows none",
                path=self._path,
            )
        return self._persistent(pid)

    def load(self) -> Any:
        """``pickle._Unpickler.load`` reading straight from the file until a FRAME opcode appears
        (protocol 4+); torch writes protocol 2, and the frame layer costs a call per read."""
        unframer = pickle._Unframer  # type: ignore[attr-defined]
        self._unframer = unframer(self._file_read, self._file_readline)
        self.read = self._file_read
        self.readinto = self._unframer.readinto
        self.readline = self._file_readline
        self.metastack = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        dispatch = self.dispatch
        try:
            while True:
                key = self.read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stopinst:  # type: ignore[attr-defined]
            return stopinst.value

    def load_frame(self) -> None:
        self.read = self._unframer.read
        self.readline = self._unframer.readline
        (frame_size,) = struct.unpack("<Q", self.read(8))
        if frame_size > self._remaining():
            raise EOFError(f"a frame of {frame_size} bytes but only {self._remaining()} remain")
        self._unframer.load_frame(frame_size)

    def _remaining(self) -> int:
        if isinstance(self._source, _BoundedReader):
            return self._source.remaining()
        with self._source.getbuffer() as buf:
            return buf.nbytes - self._source.tell()

    dispatch[pickle.FRAME[0]] = load_frame

    # -- opcodes we check --------------------------------------------------------------------------
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, type) or id(type(inst)) not in self._classes:
            kind = type(inst).__name__
            target = f"the class {inst.__name__}" if isinstance(inst, type) else f"a {kind}"
            raise UnsafePickleError(
                f"{self._what} sets attributes on {target}, which is not an instance of an "
                "allowed class; that would change an object shared by every reader, so nothing "
                "was changed",
                path=self._path,
            )
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is not None:
            setstate(inst, state)
            return
        if isinstance(state, tuple) and len(state) == 2 and not state[1]:
            state = state[0]  # (dict state, no slot state)
        if not isinstance(state, dict) or not all(
            type(k) is str and k.isidentifier() and not k.startswith("__") for k in state
        ):
            raise UnsafePickleError(
                f"{self._what} sets the state of a {type(inst).__name__} with "
                f"{short_repr(state, 60)}; only plain attribute names are allowed",
                path=self._path,
            )
        inst.__dict__.update(state)

    dispatch[pickle.BUILD[0]] = load_build

    def load_mark(self) -> None:
        check_depth(len(self.metastack) + 1, path=self._path, what=self._what)
        super().load_mark()

    dispatch[pickle.MARK[0]] = load_mark

    def load_bytearray8(self) -> None:
        # The stock opcode allocates the claimed length before reading; read (bounded) first.
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def short_repr(obj: Any, limit: int = 80) -> str:
    """``repr`` of a value from a file, bounded in depth, items and length (a pickle can share
    children so that the plain ``repr`` would be exponentially long or recurse too deep)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    try:
        text = r.repr(obj)
    except Exception:  # noqa: BLE001 - a stand-in's repr must never hide the real error
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SCALARS = frozenset({str, bytes, bytearray, int, float, complex, bool, type(None)})


def _expand(node: Any) -> tuple[list[Any], int] | None:
    """(children the graph walk descends into, number of scalar children), or None for a leaf.
    Containers and the attributes of stand-in instances are walked; everything else is a leaf."""
    if isinstance(node, dict):
        items = [*node.keys(), *node.values()]
    elif isinstance(node, (list, tuple, set, frozenset)):
        items = list(node)
    else:
        items = []
    if isinstance(type(node), StandInMeta):
        items.extend(vars(node).values())
    elif not items:
        return None
    kids = [x for x in items if type(x) not in _SCALARS]
    return kids, len(items) - len(kids)


def check_graph(root: Any, *, max_nodes: int, path: str | None, what: str = "pickle") -> None:
    """Refuse an object graph that has a cycle, nests past ``MAX_NESTING`` or whose tree (every
    shared child counted once per path to it) has more than ``max_nodes`` nodes. Iterative, and
    linear in the graph's size: each shared child is measured once."""
    if type(root) in _SCALARS:
        return
    first = _expand(root)
    if first is None:
        return
    done: dict[int, tuple[int, int]] = {}  # id -> (tree nodes, depth below)
    active = {id(root)}
    # frame: node, container children, next child, tree nodes so far, depth below
    frames: list[list[Any]] = [[root, first[0], 0, 1 + first[1], 1 if first[1] else 0]]
    while frames:
        frame = frames[-1]
        kids, i = frame[1], frame[2]
        if i == len(kids):
            frames.pop()
            active.discard(id(frame[0]))
            nodes, depth = frame[3], frame[4]
            done[id(frame[0])] = (nodes, depth)
            if frames:
                parent = frames[-1]
                parent[3] += nodes
                parent[4] = max(parent[4], depth + 1)
                if parent[3] > max_nodes:
                    raise _too_many(what, max_nodes, path)
            continue
        frame[2] = i + 1
        child = kids[i]
        known = done.get(id(child))
        if known is None:
            expanded = _expand(child)
            if expanded is not None:
                if id(child) in active:
                    raise InvalidHeaderError(
                        f"{what} holds a container that contains itself", path=path
                    )
                check_depth(len(frames) + 1, path=path, what=what)
                active.add(id(child))
                frames.append([child, expanded[0], 0, 1 + expanded[1], 1 if expanded[1] else 0])
                continue
            known = (1, 0)
        frame[3] += known[0]
        frame[4] = max(frame[4], known[1] + 1)
        if frame[3] > max_nodes:
            raise _too_many(what, max_nodes, path)


def _too_many(what: str, max_nodes: int, path: str | None) -> ResourceLimitError:
    return ResourceLimitError(
        f"{what} shares containers so often that walking it would visit more than {max_nodes} nodes",
        path=path,
    )


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

    Raises :class:`UnsafePickleError` for any global outside ``allowed`` or a BUILD that would
    change a shared object, :class:`ResourceLimitError` for nesting past ``MAX_NESTING`` or a graph
    too large to walk, and :class:`InvalidHeaderError` for a pickle that is malformed or truncated
    (every failure of the pickle machinery itself becomes a :class:`CorruptFileError` naming
    ``path`` and ``what``). The result has no cycles and may be walked recursively.
    ``encoding`` is passed to the unpickler for Python-2 ``str`` objects (``"latin1"``/``"bytes"``).
    ``refuse(module, name)`` may build a format-specific error for a refused global (it is raised,
    never called with anything from the file but the two names).
    """
    spath = os.fspath(path) if path is not None else None
    in_memory = isinstance(data, (bytes, bytearray, memoryview))
    file: BinaryIO = io.BytesIO(data) if in_memory else data  # type: ignore[arg-type]
    start = file.tell()
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
        obj = unpickler.load()
    except WeightVaultError as exc:
        if isinstance(exc, CorruptFileError) and exc.path is None and spath is not None:
            raise type(exc)(exc.message, path=spath, tensor=exc.tensor, hint=exc.hint) from None
        raise
    except RecursionError:
        raise ResourceLimitError(f"{what} is nested too deeply to read", path=spath) from None
    except MemoryError:
        raise ResourceLimitError(
            f"{what} asks for more memory than is available", path=spath
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError,
            UnicodeError, OverflowError, struct.error) as exc:
        # Errors raised by pickle's own machinery (bad opcode, truncated stream, memo miss) or by a
        # stand-in rejecting its arguments: the file is corrupt; nothing foreign ran.
        raise InvalidHeaderError(
            f"{what} is not a valid pickle: {type(exc).__name__}: {short_repr(str(exc), 200)}",
            path=spath,
        ) from None
    consumed = file.tell() - start
    max_nodes = max(MIN_TREE_NODES, TREE_NODES_PER_BYTE * consumed)
    check_graph(obj, max_nodes=max_nodes, path=spath, what=what)
    return obj
