"""The transform steps. Each is pure numpy, never touches storage, and serialises to
``{"name": ..., "configuration": {...}}`` (the shape zarr uses for codecs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from weightvault.core.dtypes import dtype_from_name

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

    def inverse(self) -> Transform:
        raise NotInvertibleError(f"{self.name} cannot be inverted on its own")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "configuration": _jsonable(asdict(self))}

    def describe(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in _jsonable(asdict(self)).items())
        return f"{self.name}({config})"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class Transpose(Transform):
    """Permute axes, e.g. Keras Dense ``[in, out]`` to PyTorch Linear ``[out, in]`` is (1, 0)."""

    name: ClassVar[str] = "transpose"
    perm: tuple[int, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != len(self.perm):
            raise ValueError(f"transpose{self.perm} needs a {len(self.perm)}-D tensor, got shape {x.shape}")
        return np.ascontiguousarray(np.transpose(x, self.perm))

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

    def apply(self, x: np.ndarray) -> np.ndarray:
        n = len(self.src)
        if x.shape[self.axis] % n:
            raise ValueError(f"axis {self.axis} of shape {x.shape} is not {n} equal gate blocks")
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
        if isinstance(self.sections, int):
            if x.shape[self.axis] % self.sections:
                raise ValueError(f"axis {self.axis} of shape {x.shape} does not split into {self.sections}")
            parts = np.split(x, self.sections, axis=self.axis)
        else:
            if sum(self.sections) != x.shape[self.axis]:
                raise ValueError(f"sizes {self.sections} do not add up to axis {self.axis} of {x.shape}")
            parts = np.split(x, np.cumsum(self.sections)[:-1], axis=self.axis)
        return np.ascontiguousarray(parts[self.index])


@dataclass(frozen=True)
class Take(Transform):
    """Index one position along ``axis`` (drops the axis): Keras GRU ``bias[0]`` is ``bias_ih``."""

    name: ClassVar[str] = "take"
    axis: int
    index: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.take(x, self.index, axis=self.axis))


@dataclass(frozen=True)
class Reshape(Transform):
    """Reshape in C order; ``from_shape`` (when known) makes it invertible."""

    name: ClassVar[str] = "reshape"
    shape: tuple[int, ...]
    from_shape: tuple[int, ...] | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x).reshape(self.shape)

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

    def inverse(self) -> Transform:
        return AddConstant(-self.value, self.start, self.stop)


# -- combiners: many sources to one array --------------------------------------------------------


@dataclass(frozen=True)
class Combine(ABC):
    """Turns the list of source arrays of a step into one array."""

    name: ClassVar[str] = ""

    @abstractmethod
    def combine(self, xs: list[np.ndarray]) -> np.ndarray: ...

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


@dataclass(frozen=True)
class Stack(Combine):
    name: ClassVar[str] = "stack"
    axis: int = 0

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.stack(xs, axis=self.axis)


@dataclass(frozen=True)
class Sum(Combine):
    """Element-wise sum: PyTorch LSTM ``bias_ih + bias_hh`` is Keras' single bias."""

    name: ClassVar[str] = "sum"

    def combine(self, xs: list[np.ndarray]) -> np.ndarray:
        out = np.array(xs[0], copy=True)
        for x in xs[1:]:
            out = out + x
        return out


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
