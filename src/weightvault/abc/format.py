"""The one reader/writer interface every weight-file format implements.

A format is a :class:`Format` subclass with four hooks:

* ``sniff(path, head)``: a cheap yes/no from the first bytes (or the directory listing);
* ``open(path, **options)``: returns a :class:`FormatReader`;
* ``write(path, tensors, metadata=..., **options)``: for writable formats;
* a ``FormatReader`` implements ``keys``, ``info`` and ``get``.

Every reader's ``get`` also takes ``framework=``: ``"numpy"`` (the default, what the hook returns)
or ``"torch"`` (a torch tensor, converted by :mod:`weightvault.frameworks.torch`, which is only
imported then). The option is added once here, around each format's hook, so formats implement
``get(name)`` only.

Everything else (iteration, ``tensors()``, stats, diff, the CLI) is built on those hooks. Tensors
cross this interface as numpy arrays whose dtype is one of :data:`weightvault.core.dtypes.DTYPES`;
writers receive a ``Mapping[str, np.ndarray]`` that may be lazy (a reader behind it), and must pull
one tensor at a time so that peak memory stays at about one tensor.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from weightvault.abc.guard import guard_format, guard_reader
from weightvault.core.dtypes import STRING, itemsize
from weightvault.errors import TensorNotFoundError, UnsupportedOperationError

if TYPE_CHECKING:  # numpy is imported where data is touched: `ls` and `--help` never need it
    import numpy as np

__all__ = [
    "FRAMEWORKS",
    "ByteSpan",
    "DescribedTensors",
    "Format",
    "FormatReader",
    "TensorInfo",
    "VerifyResult",
]

#: what ``FormatReader.get(name, framework=...)`` (and ``weightvault.load``) can return
FRAMEWORKS = ("numpy", "torch")


@dataclass(frozen=True)
class TensorInfo:
    """What a reader knows about a tensor without reading its data."""

    name: str
    #: canonical dtype name, see weightvault.core.dtypes; ``"string"`` for a string tensor
    dtype: str
    shape: tuple[int, ...]
    #: format-specific facts worth showing (offsets, shard, layout, quantization type, ...)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data; for a string tensor, the stored bytes when the reader knows them
        (``extra["nbytes"]``), else 0."""
        if self.dtype == STRING:
            return int(self.extra.get("nbytes", 0))
        return self.numel * itemsize(self.dtype)

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "numel": self.numel,
            "nbytes": self.nbytes,
        }


@dataclass(frozen=True)
class ByteSpan:
    """Where a tensor's bytes already lie in a file, exactly as a writer would store them.

    ``nbytes`` bytes at ``offset`` of the open file descriptor ``fileno`` (``path`` names it in
    errors) hold the tensor in C order, little-endian, with the dtype of ``info()``. A writer
    that finds a span streams those bytes file to file (:func:`weightvault.core.io.write_span`)
    instead of materialising the tensor. Valid only while the reader that gave it is open.
    """

    path: str
    fileno: int
    offset: int
    nbytes: int


@runtime_checkable
class DescribedTensors(Protocol):
    """Tensors by name that can say what each is before producing it.

    What writers receive from ``convert`` (a reader's :class:`LazyTensors`, a conversion plan's
    tensors, a reader itself): ``info(name)`` gives dtype and shape without reading data, so a
    writer lays out its header first and then pulls one tensor at a time; ``byte_span(name)``
    says where the bytes already lie verbatim in a file (or None), so they can be streamed across.
    A plain dict of arrays is not one: writers then look at the arrays themselves.
    """

    def __getitem__(self, name: str) -> Any: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def info(self, name: str) -> TensorInfo: ...

    def byte_span(self, name: str) -> ByteSpan | None: ...


@dataclass
class VerifyResult:
    """Outcome of :meth:`FormatReader.verify`: what was checked and what failed."""

    path: str
    checked: int = 0
    #: tensors that could be read but carry no checksum in this format
    unchecked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class FormatReader(ABC):
    """An open weight file (or directory). Use as a context manager or call :meth:`close`.

    ``weightvault.open`` returns one (``weightvault.CheckpointReader`` is this class):

    >>> state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    >>> path = weightvault.save(state, tmp_path / "sample.safetensors")
    >>> with weightvault.open(path) as reader:
    ...     print(reader.keys(), reader.info("w").shape, isinstance(reader, weightvault.CheckpointReader))
    ['w', 'b'] (2, 3) True

    The method examples below use ``reader``, such a reader of that file.
    """

    #: registry name of the format this reader belongs to
    format_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard_reader(cls)
        if callable(cls.__dict__.get("get")):
            cls.get = _with_framework(cls.__dict__["get"])  # type: ignore[method-assign]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    # -- hooks -----------------------------------------------------------------------------------
    @abstractmethod
    def keys(self) -> list[str]:
        """Tensor names, in the file's order.

        >>> reader.keys()
        ['w', 'b']
        """

    @abstractmethod
    def info(self, name: str) -> TensorInfo:
        """dtype and shape of one tensor, without reading its data.

        >>> info = reader.info("w")
        >>> info.dtype, info.shape, info.nbytes
        ('float32', (2, 3), 24)
        """

    @abstractmethod
    def get(self, name: str) -> np.ndarray:
        """The tensor as a numpy array (a read-only mmap view where the format allows); a string
        tensor (dtype ``"string"``) as an object array of ``bytes``.

        Callers may pass ``framework="torch"`` for a torch tensor (see :func:`_with_framework`);
        a format implements the numpy case only.

        >>> reader.get("w")
        array([[0., 1., 2.],
               [3., 4., 5.]], dtype=float32)
        >>> # torch is an optional dependency: the next line is shown, not run
        >>> reader.get("b", framework="torch")  # doctest: +SKIP
        tensor([0., 0.])
        """

    # -- optional hooks with defaults --------------------------------------------------------------
    @property
    def format(self) -> str:
        """The registry name of the file's format (:attr:`format_name`).

        >>> reader.format, reader.format == reader.format_name
        ('native', True)
        """
        return self.format_name

    @property
    def metadata(self) -> dict[str, Any]:
        """Format-level metadata (JSON-able): framework facts, training step, user metadata.

        >>> path = weightvault.save({"w": np.ones(2)}, tmp_path / "m.wv", metadata={"step": 7})
        >>> with weightvault.open(path) as r:
        ...     r.metadata["step"]
        7
        """
        return {}

    @property
    def skipped(self) -> dict[str, str]:
        """Entries of the file this reader cannot return as tensors (name -> why, e.g. an ``.npz``
        member of dtype ``<U3``). Commands that carry a whole file refuse them, or skip them when
        asked and list them in their report: an entry is never dropped silently.

        >>> np.savez(tmp_path / "mixed.npz", w=np.ones(2), tag=np.array(["abc"]))
        >>> with weightvault.open(tmp_path / "mixed.npz") as r:
        ...     r.keys(), sorted(r.skipped)
        (['w'], ['tag'])
        """
        return {}

    def structure(self) -> Any:
        """The saved object tree with tensors in place (lazily read), or None for a flat file.

        >>> sorted(reader.structure())
        ['b', 'w']
        """
        return None

    def tree_spec(self) -> dict[str, Any] | None:
        """The saved object tree as a :mod:`weightvault.core.tree` spec whose leaves name tensors
        (so a loader reads each stored tensor once, ties included), or None: the format keeps no
        tree, or rebuilds it in :meth:`structure`.

        >>> reader.tree_spec()["t"]
        'dict'
        """
        return None

    @property
    def aliases(self) -> dict[str, str]:
        """Names that are the same stored tensor as another name (tied weights): name -> name.

        >>> w = np.ones(3, np.float32)
        >>> with weightvault.open(weightvault.save({"a": w, "tied": w}, tmp_path / "t.wv")) as r:
        ...     r.aliases
        {'tied': 'a'}
        """
        return {}

    def checked_info(self, name: str) -> TensorInfo | None:
        """``info(name)`` once checked against the bytes the file holds, so a caller may allocate
        ``nbytes`` and fill them with :meth:`read_jobs`; None (the default) where the format
        reads through :meth:`get` only.

        >>> reader.checked_info("w").nbytes
        24
        """
        return None

    def read_jobs(self, name: str, out: np.ndarray) -> list[Callable[[], None]]:
        """Independent reads that together fill ``out`` (dtype and shape of ``checked_info``),
        safe to run on a thread pool: ``weightvault.load`` runs them in parallel. The default is
        one job that copies :meth:`get`; formats backed by plain files override it with preads.

        >>> out = np.empty((2, 3), np.float32)
        >>> for job in reader.read_jobs("w", out):
        ...     job()
        >>> out.sum()
        np.float32(15.0)
        """
        import numpy as np

        return [lambda: np.copyto(out, self.get(name), casting="equiv")]

    def get_slice(self, name: str, index: Any) -> np.ndarray:
        """``get(name)[index]``; formats that can read partial ranges override this.

        >>> reader.get_slice("w", (1, slice(0, 2)))
        array([3., 4.], dtype=float32)
        """
        import numpy as np

        return np.asarray(self.get(name)[index])

    def byte_span(self, name: str) -> ByteSpan | None:
        """Where ``name``'s bytes lie verbatim in the file, or None (compressed, strided,
        byte-swapped, or a format that cannot tell). Readers backed by plain files override this.

        >>> span = reader.byte_span("w")
        >>> span.nbytes
        24
        """
        return None

    def verify(self) -> VerifyResult:
        """Read every tensor; formats that store checksums override this to check them.

        >>> result = reader.verify()
        >>> result.checked, result.failures
        (2, [])
        """
        result = VerifyResult(self.path)
        for name in self.keys():
            self.get(name)
            result.unchecked += 1
        return result

    def close(self) -> None:  # noqa: B027 - optional hook, most readers hold nothing
        """Release files and maps (``with weightvault.open(...)`` calls it on leaving).

        >>> r = weightvault.open(weightvault.save({"w": np.ones(2)}, tmp_path / "c.wv"))
        >>> r.close()
        """

    # -- conveniences built on the hooks --------------------------------------------------------
    def _require(self, name: str) -> None:
        if name not in self:
            raise TensorNotFoundError(
                f"no such tensor; the file has {len(self.keys())} tensors "
                f"(first: {', '.join(self.keys()[:5]) or 'none'})",
                path=self.path,
                tensor=name,
            )

    def __contains__(self, name: object) -> bool:
        return name in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def infos(self) -> list[TensorInfo]:
        """:meth:`info` of every tensor, in the file's order.

        >>> [(i.name, i.shape) for i in reader.infos()]
        [('w', (2, 3)), ('b', (2,))]
        """
        return [self.info(n) for n in self.keys()]

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` pairs, each tensor read as it is reached.

        >>> [(name, a.shape) for name, a in reader.items()]
        [('w', (2, 3)), ('b', (2,))]
        """
        for name in self.keys():
            yield name, self.get(name)

    def tensors(self) -> dict[str, np.ndarray]:
        """Every tensor, read into memory (copies, so the file can be closed).

        >>> {name: a.tolist() for name, a in reader.tensors().items()}
        {'w': [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 'b': [0.0, 0.0]}
        """
        import numpy as np

        return {name: np.array(self.get(name)) for name in self.keys()}

    def as_mapping(self) -> LazyTensors:
        """A read-only mapping that reads each tensor only when a writer asks for it.

        >>> lazy = reader.as_mapping()
        >>> len(lazy), lazy["b"].tolist()
        (2, [0.0, 0.0])
        """
        return LazyTensors(self)

    def __enter__(self) -> FormatReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} format={self.format!r} tensors={len(self)}>"


def _with_framework(get: Any) -> Any:
    """``get(name, *, framework="numpy")`` around a format's ``get(name)`` hook.

    ``"torch"`` hands the array to torch with its exact dtype (bfloat16 and float8 included),
    copying a read-only mmap view so the tensor stays valid after the reader closes. String
    tensors stay numpy object arrays, as in :func:`weightvault.load`: torch has no strings.
    """
    if getattr(get, "__wv_framework__", False):
        return get

    @functools.wraps(get)
    def get_as(self: FormatReader, name: str, *, framework: str = "numpy") -> Any:
        if framework not in FRAMEWORKS:
            # A wrong argument is a programming error, not a bad file: ValueError (docs/api.md).
            raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
        array = get(self, name)
        if framework == "numpy" or array.dtype.kind == "O":
            return array
        from weightvault.frameworks.torch import from_numpy

        return from_numpy(array)

    hook = inspect.signature(get)
    get_as.__signature__ = hook.replace(  # type: ignore[attr-defined]
        parameters=[
            *hook.parameters.values(),
            inspect.Parameter(
                "framework", inspect.Parameter.KEYWORD_ONLY, default="numpy", annotation="str"
            ),
        ],
        return_annotation="Any",
    )
    get_as.__wv_framework__ = True  # type: ignore[attr-defined]
    return get_as


class LazyTensors(Mapping[str, "np.ndarray"]):
    """Mapping view of a reader: values are read on access, one at a time."""

    def __init__(self, reader: FormatReader, names: list[str] | None = None) -> None:
        self.reader = reader
        self._names = list(reader.keys()) if names is None else names

    def __getitem__(self, name: str) -> np.ndarray:
        return self.reader.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def info(self, name: str) -> TensorInfo:
        return self.reader.info(name)

    def byte_span(self, name: str) -> ByteSpan | None:
        return self.reader.byte_span(name)


class _FromRow:
    """A class attribute a built-in format takes from its row in :mod:`weightvault.registry`.

    The row is the one place a format's file name endings and writability are written down (the
    registry needs them before it imports the class). A class that sets the attribute itself (a
    third-party format) keeps its own value; a subclass of a built-in format inherits its row's.
    """

    def __init__(self, field: str, default: Any) -> None:
        self.field = field
        self.default = default

    def __get__(self, obj: Any, owner: type) -> Any:
        from weightvault.registry import row

        for klass in owner.__mro__:
            found = row(getattr(klass, "name", ""))
            if found is not None and found.target == f"{klass.__module__}:{klass.__qualname__}":
                return getattr(found, self.field)
        return self.default


class Format(ABC):
    """A weight-file format: detection, opening and (optionally) writing."""

    #: registry name, e.g. ``"pytorch"``
    name: ClassVar[str] = ""
    #: one line for ``weightvault formats``
    description: ClassVar[str] = ""
    #: file name endings used when sniffing fails and to pick a writer from a destination name
    #: (built-in formats: from their registry row)
    extensions: ClassVar[tuple[str, ...]] = _FromRow("extensions", ())  # type: ignore[assignment]
    #: whether :meth:`write` is implemented (built-in formats: from their registry row)
    can_write: ClassVar[bool] = _FromRow("writable", False)  # type: ignore[assignment]
    #: whether :meth:`write` stores string tensors (dtype ``"string"``); ``convert`` refuses to
    #: write them to other formats unless told to skip them
    can_write_strings: ClassVar[bool] = False
    #: the option keys ``open`` accepts (``-o KEY=VALUE``), each with a one-line help; None: not
    #: declared (not checked). ``weightvault formats NAME`` lists them; others are refused.
    read_options: ClassVar[Mapping[str, str] | None] = None
    #: the option keys ``write`` accepts (``-w KEY=VALUE``), as ``read_options``
    write_options: ClassVar[Mapping[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        guard_format(cls)

    @classmethod
    @abstractmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        """Cheap check: could ``path`` be this format? ``head`` is the first 4 KiB (b"" for dirs)."""

    @classmethod
    @abstractmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> FormatReader:
        """Open ``path`` for reading. Raises a :class:`weightvault.errors.CorruptFileError` subclass
        for invalid files."""

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Write ``tensors`` to ``path`` atomically (see :func:`weightvault.core.io.atomic_write`)."""
        raise UnsupportedOperationError(f"format {cls.name!r} is read-only", path=path)
