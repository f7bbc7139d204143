"""The transform steps. Each is pure numpy, never touches storage, and serialises to
``{"name": ..., "configuration": {...}}`` (the shape zarr uses for codecs).

Each also states its output's dtype and shape from its input's without any data
(``resolve_info``, zarr v3's ``resolve_metadata``): a plan's ``info()``, ``convert --dry-run``
and the writers' headers need no tensor read, and the tensors are read once, when written. The
checks ``resolve_info`` makes are those ``apply`` makes, with the same messages."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import TensorInfo
from weightvault.core.dtypes import dtype_from_name, dtype_name
from weightvault.core.jsonable import jsonable

__all__ = [
    "AddConstant",
    "Cast",
    "Combine",
    "Concat",
    "Full",
    "ReorderGates",
    "Reshape",
    "Split",
    "Stack",
    "Sum",
    "Take",
    "Transform",
    "Transpose",
    "transform_from_dict",
]


class NotInvertibleError(ValueError):
    """The transform loses information (a split part, a sum) and cannot be undone alone."""


@dataclass(frozen=True)
class Transform(ABC):
    """One array-to-array step."""

    name: ClassVar[str] = ""

    @abstractmethod
    def apply(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        """dtype and shape of ``apply``'s output for an input described by ``info``."""

    def inverse(self) -> Transform:
        raise NotInvertibleError(f"{self.name} cannot be inverted on its own")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": _jsonable(asdict(self))}

    def describe(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in _jsonable(asdict(self)).items())
        return f"{self.name}({config})"


def _jsonable(obj: Any) -> Any:
    return jsonable(obj)


@dataclass(frozen=True)
class Transpose(Transform):
    """Permute axes, e.g. Keras Dense ``[in, out]`` to PyTorch Linear ``[out, in]`` is (1, 0)."""

    name: ClassVar[str] = "transpose"
    perm: tuple[int, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        self._check(x.shape)
        return _contiguous(np.transpose(x, self.perm))

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        self._check(info.shape)
        return _like(info, shape=tuple(info.shape[i] for i in self.perm))

    def _check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != len(self.perm):
            raise ValueError(f"transpose{self.perm} needs a {len(self.perm)}-D tensor, got shape {shape}")
        if sorted(_axis(p, shape) for p in self.perm) != list(range(len(shape))):
            raise ValueError(f"transpose{self.perm} is not a permutation of the axes of {shape}")

    def inverse(self) -> Transform:
        return Transpose(tuple(int(i) for i in np.argsort(self.perm)))


@dataclass(frozen=True)
class ReorderGates(Transform):
    """Reorder equal gate blocks along ``axis``: ``src="zrh"`` to ``dst="rzh"`` (one letter a gate).

    Gate order differs between every runtime (Keras LSTM i,f,c,o = PyTorch i,f,g,o; Keras GRU
    z,r,h vs PyTorch r,z,n; ONNX LSTM i,o,f,c; TF1 LSTMCell i,j,f,o), so conversions always go
    through named gates rather than hard-coded block swaps.
    """

    name: ClassVar[str] = "reorder_gates"
    src: str
    dst: str
    axis: int = 0

    def __post_init__(self) -> None:
        if sorted(self.src) != sorted(self.dst) or len(set(self.src)) != len(self.src):
            raise ValueError(f"gate orders {self.src!r} and {self.dst!r} must be permutations of each other")

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        self._check(info.shape)
        return _like(info)

    def _check(self, shape: tuple[int, ...]) -> None:
        n = len(self.src)
        if shape[_axis(self.axis, shape)] % n:
            raise ValueError(f"axis {self.axis} of shape {shape} is not {n} equal gate blocks")

    def apply(self, x: np.ndarray) -> np.ndarray:
        n = len(self.src)
        self._check(x.shape)
        blocks = np.split(x, n, axis=self.axis)
        by_gate = dict(zip(self.src, blocks, strict=True))
        return np.ascontiguousarray(np.concatenate([by_gate[g] for g in self.dst], axis=self.axis))

    def inverse(self) -> Transform:
        return ReorderGates(self.dst, self.src, self.axis)


@dataclass(frozen=True)
class Split(Transform):
    """Keep part ``index`` of ``x`` split along ``axis`` into ``sections`` (a count or sizes)."""

    name: ClassVar[str] = "split"
    axis: int
    sections: int | tuple[int, ...]
    index: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        sizes = self._sizes(x.shape)
        parts = np.split(x, np.cumsum(sizes)[:-1], axis=self.axis)
        return np.ascontiguousarray(parts[self.index])

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        sizes = self._sizes(info.shape)
        axis = _axis(self.axis, info.shape)
        shape = list(info.shape)
        shape[axis] = sizes[self.index]
        return _like(info, shape=tuple(shape))

    def _sizes(self, shape: tuple[int, ...]) -> list[int]:
        """The length of each part along the axis (the checks ``np.split`` would make)."""
        length = shape[_axis(self.axis, shape)]
        if isinstance(self.sections, int):
            if self.sections <= 0 or length % self.sections:
                raise ValueError(f"axis {self.axis} of shape {shape} does not split into {self.sections}")
            sizes = [length // self.sections] * self.sections
        else:
            if sum(self.sections) != length:
                raise ValueError(f"sizes {self.sections} do not add up to axis {self.axis} of {shape}")
            sizes = list(self.sections)
        if not -len(sizes) <= self.index < len(sizes):
            raise IndexError(f"split part {self.index} of {len(sizes)} does not exist")
        return sizes


@dataclass(frozen=True)
class Take(Transform):
    """Index one position along ``axis`` (drops the axis): Keras GRU ``bias[0]`` is ``bias_ih``."""

    name: ClassVar[str] = "take"
    axis: int
    index: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _contiguous(np.take(x, self.index, axis=self.axis))

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        axis = _axis(self.axis, info.shape)
        length = info.shape[axis]
        if not -length <= self.index < length:
            raise IndexError(f"index {self.index} is out of bounds for axis {axis} with size {length}")
        return _like(info, shape=info.shape[:axis] + info.shape[axis + 1 :])


@dataclass(frozen=True)
class Reshape(Transform):
    """Reshape in C order; ``from_shape`` (when known) makes it invertible."""

    name: ClassVar[str] = "reshape"
    shape: tuple[int, ...]
    from_shape: tuple[int, ...] | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x).reshape(self.shape)

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        return _like(info, shape=_reshaped(info.shape, self.shape))

    def inverse(self) -> Transform:
        if self.from_shape is None:
            raise NotInvertibleError("reshape without from_shape cannot be inverted")
        return Reshape(self.from_shape, self.shape)


@dataclass(frozen=True)
class Cast(Transform):
    """Change dtype (canonical names); ``from_dtype`` makes it invertible."""

    name: ClassVar[str] = "cast"
    dtype: str
    from_dtype: str | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x.astype(dtype_from_name(self.dtype))

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        return _like(info, dtype=dtype_name(dtype_from_name(self.dtype)))

    def inverse(self) -> Transform:
        if self.from_dtype is None:
            raise NotInvertibleError("cast without from_dtype cannot be inverted")
        return Cast(self.from_dtype, self.dtype)


@dataclass(frozen=True)
class AddConstant(Transform):
    """Add ``value`` to ``x[start:stop]`` along axis 0 (all of it when both are None).

    TF1 ``LSTMCell`` adds ``forget_bias`` (1.0) to the forget gate at run time; PyTorch has no
    such term, so converting adds it to the forget block of the bias.
    """

    name: ClassVar[str] = "add_constant"
    value: float
    start: int | None = None
    stop: int | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, copy=True)
        out[self.start : self.stop] += np.asarray(self.value, dtype=out.dtype)
        return out

    def resolve_info(self, info: TensorInfo) -> TensorInfo:
        if not info.shape:
            raise IndexError("add_constant slices axis 0; a scalar has none")
        return _like(info)

    def inverse(self) -> Transform:
        return AddConstant(-self.value, self.start, self.stop)


# -- combiners: many sources to one array --------------------------------------------------------


@dataclass(frozen=True)
class Combine(ABC):
    """Turns the list of source arrays of a step into one array."""

    name: ClassVar[str] = ""

    @abstractmethod
    def combine(self, xs: list[np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        """dtype and shape of ``combine``'s output for inputs described by ``infos`` (the name
        is the first input's, or empty when there is none)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": _jsonable(asdict(self))}

    def describe(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in _jsonable(asdict(self)).items())
        return f"{self.name}({config})"


@dataclass(frozen=True)
class Concat(Combine):
    name: ClassVar[str] = "concat"
    axis: int = 0

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs, axis=self.axis)

    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        shapes = _needs_inputs(self.name, infos)
        axis = _axis(self.axis, shapes[0])
        rest = [s[:axis] + s[axis + 1 :] for s in shapes]
        if any(len(s) != len(shapes[0]) or r != rest[0] for s, r in zip(shapes, rest, strict=True)):
            raise ValueError(f"concat along axis {self.axis} needs matching shapes, got {shapes}")
        shape = list(shapes[0])
        shape[axis] = sum(s[axis] for s in shapes)
        return _like(infos[0], dtype=_promoted(infos), shape=tuple(shape))


@dataclass(frozen=True)
class Stack(Combine):
    name: ClassVar[str] = "stack"
    axis: int = 0

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.stack(xs, axis=self.axis)

    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        shapes = _needs_inputs(self.name, infos)
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"stack needs equal shapes, got {shapes}")
        shape = list(shapes[0])
        axis = self.axis + len(shape) + 1 if self.axis < 0 else self.axis
        if not 0 <= axis <= len(shape):
            raise ValueError(f"stack axis {self.axis} is out of range for shape {shapes[0]}")
        shape.insert(axis, len(shapes))
        return _like(infos[0], dtype=_promoted(infos), shape=tuple(shape))


@dataclass(frozen=True)
class Sum(Combine):
    """Element-wise sum: PyTorch LSTM ``bias_ih + bias_hh`` is Keras' single bias."""

    name: ClassVar[str] = "sum"

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        out = np.array(xs[0], copy=True)
        for x in xs[1:]:
            out = out + x
        return out

    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        shapes = _needs_inputs(self.name, infos)
        try:
            shape = tuple(int(n) for n in np.broadcast_shapes(*shapes))
        except ValueError as exc:
            raise ValueError(f"sum needs shapes that broadcast, got {shapes}") from exc
        return _like(infos[0], dtype=_promoted(infos), shape=shape)


@dataclass(frozen=True)
class Full(Combine):
    """A constant tensor (no sources): Keras LSTM has no recurrent bias but PyTorch needs one
    (zeros); a BatchNorm saved with ``scale=False`` has no gamma (ones)."""

    name: ClassVar[str] = "full"
    shape: tuple[int, ...]
    value: float = 0.0
    dtype: str = "float32"

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.full(self.shape, self.value, dtype_from_name(self.dtype))

    def resolve_info(self, infos: list[TensorInfo]) -> TensorInfo:
        name = infos[0].name if infos else ""
        return TensorInfo(name, dtype_name(dtype_from_name(self.dtype)), tuple(self.shape))


def _contiguous(x: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (``np.ascontiguousarray`` turns a 0-d result,
    such as ``take`` from a 1-D tensor, into shape ``(1,)``)."""
    return np.ascontiguousarray(x) if x.ndim else np.array(x, copy=True)


# -- shape arithmetic shared by resolve_info -----------------------------------------------------


def _like(
    info: TensorInfo, *, dtype: str | None = None, shape: tuple[int, ...] | None = None
) -> TensorInfo:
    """``info`` with a new dtype and/or shape; format-specific facts do not carry over."""
    return TensorInfo(
        info.name, info.dtype if dtype is None else dtype, tuple(info.shape if shape is None else shape)
    )


def _axis(axis: int, shape: tuple[int, ...]) -> int:
    """``axis`` counted from the front, checked as numpy does."""
    if not -len(shape) <= axis < len(shape):
        raise np.exceptions.AxisError(axis, len(shape))
    return axis % len(shape)


def _reshaped(shape: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    """``new`` with a ``-1`` filled in, checked against the element count as numpy does."""
    size = math.prod(shape)
    known = math.prod(n for n in new if n != -1)
    unknown = [i for i, n in enumerate(new) if n == -1]
    if len(unknown) > 1 or any(n < -1 for n in new):
        raise ValueError(f"cannot reshape array of size {size} into shape {tuple(new)}")
    if unknown:
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape array of size {size} into shape {tuple(new)}")
        filled = list(new)
        filled[unknown[0]] = size // known
        return tuple(filled)
    if known != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {tuple(new)}")
    return tuple(new)


def _needs_inputs(name: str, infos: list[TensorInfo]) -> list[tuple[int, ...]]:
    if not infos:
        raise ValueError(f"{name} needs at least one source")
    return [tuple(i.shape) for i in infos]


def _promoted(infos: list[TensorInfo]) -> str:
    """The dtype numpy gives when combining arrays of these dtypes (computed on one element each,
    so ml_dtypes' bfloat16 and float8 promote exactly as in ``combine``)."""
    dtypes = {i.dtype for i in infos}
    if len(dtypes) == 1:
        return infos[0].dtype
    arrays = [np.zeros(1, dtype_from_name(i.dtype)) for i in infos]
    return dtype_name(np.concatenate(arrays).dtype)


_TRANSFORMS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (Transpose, ReorderGates, Split, Take, Reshape, Cast, AddConstant, Concat, Stack, Sum, Full)
}


def transform_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a transform or combiner from its ``to_dict()`` form."""
    cls = _TRANSFORMS.get(d.get("name", ""))
    if cls is None:
        raise ValueError(f"unknown transform {d.get('name')!r}; known: {', '.join(sorted(_TRANSFORMS))}")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("configuration", {}).items()}
    return cls(**config)
