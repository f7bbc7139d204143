"""TensorFlow graphs: frozen ``GraphDef`` ``.pb`` files (weights in Const nodes) and TF1 ``.meta`` files.

* **Frozen GraphDef** (``convert_variables_to_constants``): every ``Const`` node's ``value`` attr is
  a ``TensorProto``. Its data is ``tensor_content`` (raw little-endian bytes) or a typed field
  (``float_val``, ``int_val``, ``half_val`` holding 16-bit patterns for half *and* bfloat16, ...),
  where TF's rule applies: with fewer values than elements the **last value repeats**, with none the
  tensor is zeros (``tensor.cc``). String Consts are not weights and are left out of ``keys()``.
  ``write(path, tensors, template="graph.pb")`` copies the template graph node by node and replaces
  the ``value`` of each Const named in ``tensors`` (shape must match; values are cast to the Const's
  dtype so downstream ops keep their input types). Without a template a graph of Const nodes only
  is written.
* **MetaGraphDef** (``.meta`` from ``tf.compat.v1.train.Saver``): the variables come from the
  ``variables``/``trainable_variables``/... collections (serialized ``VariableDef``) and from
  ``VariableV2``/``VarHandleOp`` nodes. When the checkpoint sits beside the ``.meta`` (same prefix),
  ``keys()`` are the tensors the data files hold (read through :class:`TFBundleReader`, or
  :class:`~weightvault.formats.tf_v1.TFV1Reader` for a V1 ``PREFIX`` file), and
  ``metadata["graph_only_variables"]`` lists variables with no saved value. Without a checkpoint
  ``keys()`` is empty and ``metadata["variables"]`` still lists every variable with dtype and shape.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.core.dtypes import DTYPES, dtype_name
from weightvault.core.io import atomic_write
from weightvault.core.limits import check_expansion
from weightvault.core.protobuf import (
    LEN,
    Message,
    ProtobufDecodeError,
    Writer,
    get_bytes,
    get_int,
    get_message,
    get_messages,
    get_packed,
    get_str,
    iter_fields,
    parse,
)
from weightvault.errors import (
    InvalidHeaderError,
    InvalidOffsetError,
    ShapeMismatchError,
    TensorNotFoundError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats.tf_bundle import _TF_DTYPE_NAMES, DT_STRING, TF_CODES, TF_DTYPES, TFBundleReader
from weightvault.formats.tf_v1 import TFV1Reader, find_v1_checkpoint

__all__ = ["TFGraphFormat", "TFGraphReader", "decode_tensor_proto", "encode_tensor_proto"]

_QUANTIZED_NAMES = {11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16", 16: "quint16"}
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp", "VariableV3"}
_COLLECTIONS = ("variables", "trainable_variables", "model_variables", "local_variables",
                "moving_average_variables")  # fmt: skip

# TensorProto typed value fields: dtype -> (field number, packed kind, numpy dtype of the field)
_VALUE_FIELDS: dict[str, tuple[int, str]] = {
    "float32": (5, "float"), "float64": (6, "double"), "int32": (7, "int32"), "int16": (7, "int32"),
    "int8": (7, "int32"), "uint8": (7, "int32"), "uint16": (7, "int32"), "int64": (10, "int64"),
    "bool": (11, "bool"), "float16": (13, "int32"), "bfloat16": (13, "int32"), "complex64": (9, "float"),
    "complex128": (12, "double"), "uint32": (16, "uint32"), "uint64": (17, "uint64"),
}  # fmt: skip
_FLOAT8_FIELD = 18  # float8_val: one byte per value


def _shape(msg: Message | None, path: Any, name: str) -> tuple[int, ...] | None:
    if msg is None:
        return ()
    if get_int(msg, 3):
        return None  # unknown rank
    dims = tuple(get_int(d, 1) for d in get_messages(msg, 2, path=path))
    if any(d < 0 for d in dims):
        return None
    return dims


def _dtype_label(code: int) -> str:
    """A DataType enum as TF names it in a ``.meta`` listing (string, resource, ... included)."""
    return TF_DTYPES.get(code) or _TF_DTYPE_NAMES.get(code) or _QUANTIZED_NAMES.get(code) or str(code)


def _dtype(code: int, *, path: Any, tensor: str) -> str:
    name = TF_DTYPES.get(code)
    if name is None:
        raise UnknownDtypeError(f"TensorFlow dtype {code} is not supported", path=path, tensor=tensor)
    return name


def decode_tensor_proto(buf: Any, *, path: Any = None, tensor: str = "") -> np.ndarray:
    """A ``TensorProto`` as a numpy array (see the module docstring for the typed-field rules).

    Nothing is allocated before it is checked: ``tensor_content`` must hold exactly
    ``numel x itemsize`` bytes, and a typed-field fill (fewer values than elements, TF repeats the
    last) goes through :func:`~weightvault.core.limits.check_expansion` against the proto's bytes.
    """
    try:
        return _decode_tensor_proto(buf, path=path, tensor=tensor)
    except ProtobufDecodeError as exc:
        raise InvalidHeaderError(f"bad TensorProto: {exc.message}", path=path, tensor=tensor) from None


def _decode_tensor_proto(buf: Any, *, path: Any, tensor: str) -> np.ndarray:
    msg = parse(buf, path=path)
    dtype = _dtype(get_int(msg, 1), path=path, tensor=tensor)
    shape = _shape(get_message(msg, 2, path=path), path, tensor)
    if shape is None:
        raise InvalidHeaderError("Const tensor has an unknown shape", path=path, tensor=tensor)
    dt = DTYPES[dtype]
    n = math.prod(shape)
    nbytes = n * dt.itemsize
    content = msg.get(4)
    if content and len(content[-1]):
        raw = content[-1]
        if isinstance(raw, int) or len(raw) != nbytes:
            have = "a number" if isinstance(raw, int) else f"{len(raw)} bytes"
            raise InvalidOffsetError(
                f"tensor_content has {have}, {dtype}{list(shape)} needs {nbytes}", path=path, tensor=tensor,
            )
        return np.frombuffer(bytes(raw), dtype=dt).reshape(shape)
    values = _typed_values(msg, dtype, dt, path=path, tensor=tensor)
    if values.size >= n:
        return np.ascontiguousarray(values[:n], dtype=dt).reshape(shape)
    # TF's fill rule: the last value repeats (zeros when there is none) - an expansion.
    check_expansion(nbytes, len(buf), path=path, tensor=tensor, what="Const fill")
    flat = np.full(n, values[-1] if values.size else 0, dtype=dt)
    flat[: values.size] = values
    return flat.reshape(shape)


def _typed_values(msg: Message, dtype: str, dt: np.dtype, *, path: Any, tensor: str) -> np.ndarray:
    """The ``*_val`` field of ``dtype`` as a flat array of ``dt`` (its length bounded by the proto)."""
    if dtype.startswith("float8"):
        return np.frombuffer(get_bytes(msg, _FLOAT8_FIELD), dtype=np.uint8).view(dt)
    if dtype not in _VALUE_FIELDS:
        raise UnsupportedOperationError(f"{dtype} Const without tensor_content is not supported",
                                        path=path, tensor=tensor)
    field, kind = _VALUE_FIELDS[dtype]
    values = get_packed(msg, field, kind, path=path)
    if dtype in ("float16", "bfloat16"):
        return values.astype(np.uint16).view(dt)
    if dtype in ("complex64", "complex128"):
        return values[: len(values) // 2 * 2].view(dt)
    return values.astype(dt)


def encode_tensor_proto(arr: np.ndarray) -> bytes:
    """``TensorProto`` with dtype, shape and ``tensor_content`` (what TF writes for real weights)."""
    dtype = dtype_name(arr.dtype)
    if dtype not in TF_CODES:
        raise UnsupportedOperationError(f"TensorFlow has no {dtype} dtype")
    shape = Writer()
    for dim in arr.shape:
        shape.message(2, Writer().varint(1, dim) if dim else Writer())
    w = Writer().varint(1, TF_CODES[dtype]).message(2, shape)
    data = np.ascontiguousarray(arr).tobytes()
    if data:
        w.bytes(4, data)
    return w.tobytes()


def _attrs(node: Message, path: Any) -> dict[str, Message]:
    out = {}
    for entry in get_messages(node, 5, path=path):
        out[get_str(entry, 1)] = get_message(entry, 2, path=path) or Message()
    return out


class _Graph:
    """The nodes of a GraphDef: name -> (op, attrs)."""

    def __init__(self, buf: Any, path: Any) -> None:
        self.nodes: list[tuple[str, str, dict[str, Message]]] = []
        for node in get_messages(parse(buf, path=path), 1, path=path):
            self.nodes.append((get_str(node, 1), get_str(node, 2), _attrs(node, path)))


class TFGraphReader(FormatReader):
    format_name = "tf_graph"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        with open(self.path, "rb") as f:
            self._data = memoryview(f.read())
        self._bundle: TFBundleReader | TFV1Reader | None = None
        self._consts: dict[str, Any] = {}  # name -> TensorProto bytes
        self._infos: dict[str, TensorInfo] = {}
        self._meta: dict[str, Any] = {}
        try:
            if self.path.endswith(".meta"):
                self._load_meta()
            else:
                self._load_graph(self._data)
        except ProtobufDecodeError as exc:
            raise InvalidHeaderError(f"not a TensorFlow graph: {exc.message}", path=self.path) from None

    # -- frozen graph ---------------------------------------------------------------------------
    def _load_graph(self, buf: Any) -> None:
        graph = _Graph(buf, self.path)
        if not graph.nodes:
            raise InvalidHeaderError("GraphDef has no nodes", path=self.path)
        strings = []
        for name, op, attrs in graph.nodes:
            if op != "Const" or "value" not in attrs:
                continue
            tensor = get_bytes(attrs["value"], 8)
            if not tensor:
                continue
            tmsg = parse(tensor, path=self.path)
            code = get_int(tmsg, 1)
            if code == DT_STRING:
                strings.append(name)
                continue
            shape = _shape(get_message(tmsg, 2, path=self.path), self.path, name)
            if shape is None:
                continue
            self._consts[name] = attrs["value"][8][-1]
            self._infos[name] = TensorInfo(name, _dtype(code, path=self.path, tensor=name), shape,
                                           {"op": "Const", "tensor_content": 4 in tmsg})
        self._meta["kind"] = "frozen_graph"
        self._meta["nodes"] = len(graph.nodes)
        self._meta["ops"] = sorted({op for _, op, _ in graph.nodes})
        if strings:
            self._meta["string_consts"] = strings

    # -- meta graph -----------------------------------------------------------------------------
    def _load_meta(self) -> None:
        meta = parse(self._data, path=self.path)
        graph_buf = meta.get(2, [b""])[-1]
        graph = _Graph(graph_buf, self.path)
        variables: dict[str, dict[str, Any]] = {}
        for name, op, attrs in graph.nodes:
            if op not in _VARIABLE_OPS:
                continue
            code = get_int(attrs.get("dtype", Message()), 6)
            shape = _shape(get_message(attrs["shape"], 7, path=self.path), self.path, name) if "shape" in attrs else None
            variables[name] = {
                "name": name, "op": op,
                "dtype": _dtype_label(code % 100),  # _REF types are 100 + base
                "shape": list(shape) if shape is not None else None, "collections": [],
            }
        for entry in get_messages(meta, 4, path=self.path):
            key = get_str(entry, 1)
            value = get_message(entry, 2, path=self.path) or Message()
            bytes_list = get_message(value, 2, path=self.path)
            if key not in _COLLECTIONS or bytes_list is None:
                continue
            for raw in bytes_list.get(1, []):
                vdef = parse(raw, path=self.path)
                var_name = get_str(vdef, 1).rsplit(":", 1)[0]
                item = variables.setdefault(var_name, {"name": var_name, "op": None, "dtype": None,
                                                       "shape": None, "collections": []})
                item["collections"].append(key)
                if key == "trainable_variables":
                    # the only record of trainability in graphs older than TF 1.14, which
                    # had no VariableDef.trainable
                    item["trainable"] = True
                if key == "variables":
                    item["trainable"] = item.get("trainable", False) or bool(get_int(vdef, 7))
                    slice_info = get_message(vdef, 4, path=self.path)
                    if slice_info is not None:
                        item["partition_of"] = get_str(slice_info, 1)
                        item["full_shape"] = get_packed(slice_info, 2, "int64").tolist()
        info = get_message(meta, 1, path=self.path)
        self._meta["kind"] = "meta_graph"
        if info is not None and get_str(info, 5):
            self._meta["tensorflow_version"] = get_str(info, 5)
        prefix = self.path[: -len(".meta")]
        v1 = None if os.path.isfile(prefix + ".index") else find_v1_checkpoint(prefix)
        if os.path.isfile(prefix + ".index"):
            self._bundle = TFBundleReader(prefix)
            self._meta["checkpoint"] = prefix
            self._meta["weights"] = f"read from the V2 checkpoint {prefix}.index"
        elif v1 is not None:
            self._bundle = TFV1Reader(v1)
            self._meta["checkpoint"] = v1
            self._meta["weights"] = f"read from the V1 checkpoint {v1}"
        else:
            self._meta["weights"] = (
                f"no checkpoint beside this graph (looked for {prefix}.index and the V1 file "
                f"{prefix}): the .meta lists variables only"
            )
        held = set(self._bundle.keys()) | set(self._bundle.string_keys()) if self._bundle else set()
        for item in variables.values():
            name = item.get("partition_of") or item["name"]
            item["in_checkpoint"] = name in held
        self._meta["variables"] = list(variables.values())
        saved_names = {v.get("partition_of") or v["name"] for v in variables.values()}
        self._meta["graph_only_variables"] = [v["name"] for v in variables.values() if not v["in_checkpoint"]]
        if self._bundle is not None:
            self._meta["checkpoint_only_tensors"] = [k for k in self._bundle.keys() if k not in saved_names]

    # -- reader API -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        if self._bundle is not None:
            return self._bundle.keys()
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        if self._bundle is not None:
            return self._bundle.info(name)
        self._require(name)
        return self._infos[name]

    def get(self, name: str) -> np.ndarray:
        if self._bundle is not None:
            return self._bundle.get(name)
        if name not in self._infos:
            raise TensorNotFoundError(f"no Const node of that name ({len(self._infos)} weights)", path=self.path,
                                      tensor=name)
        return decode_tensor_proto(self._consts[name], path=self.path, tensor=name)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    def verify(self) -> Any:
        if self._bundle is not None:
            return self._bundle.verify()
        return super().verify()

    def close(self) -> None:
        if self._bundle is not None:
            self._bundle.close()


def _replace_node(node: Any, arr: np.ndarray, code: int) -> bytes:
    w = Writer()
    for field, wire, value in iter_fields(node):
        if field == 5 and wire == LEN:
            entry = parse(value)
            key = get_str(entry, 1)
            if key == "value":
                attr = Writer().bytes(8, encode_tensor_proto(arr))
                w.message(5, Writer().string(1, key).message(2, attr))
                continue
            if key == "dtype":
                w.message(5, Writer().string(1, key).message(2, Writer().varint(6, code)))
                continue
        w.field(field, wire, value)
    return w.tobytes()


def _const_node(name: str, arr: np.ndarray) -> bytes:
    code = TF_CODES[dtype_name(arr.dtype, tensor=name)]
    w = Writer().string(1, name).string(2, "Const")
    w.message(5, Writer().string(1, "dtype").message(2, Writer().varint(6, code)))
    w.message(5, Writer().string(1, "value").message(2, Writer().bytes(8, encode_tensor_proto(arr))))
    return w.tobytes()


#: variable nodes that freezing turns into Consts (ref variables and resource handles)
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
#: ops that only initialise, train, save or restore variables: a frozen graph drops them, and
#: every node that depends on one (``init``, ``save/restore_all``, the training step)
_TRAINING_ONLY_OPS = re.compile(
    r"^(Assign\w*|Apply\w+|ResourceApply\w+|(Resource)?Scatter\w+|Save(V2|Slices)?|"
    r"Restore(V2|Slice)?|MergeV2Checkpoints|IsVariableInitialized|VarIsInitializedOp|"
    r"DestroyResourceOp)$"
)


def _node_inputs(node: Message) -> list[str]:
    """Names of the nodes ``node`` reads from (``x:1`` and control inputs ``^x`` alike)."""
    return [bytes(v).decode("utf-8", "replace").lstrip("^").split(":")[0] for v in node.get(3, [])]


def _identity_node(node: Message, code: int) -> bytes:
    """``ReadVariableOp`` of a frozen handle becomes ``Identity`` of the Const (attr ``T``)."""
    w = Writer().string(1, get_str(node, 1)).string(2, "Identity")
    for value in node.get(3, []):
        w.bytes(3, bytes(value))
    if node.get(4):
        w.bytes(4, bytes(node[4][0]))
    return w.message(5, Writer().string(1, "T").message(2, Writer().varint(6, code))).tobytes()


def _shape_attr(attrs: dict[str, Message]) -> tuple[int, ...] | None:
    shape = get_message(attrs.get("shape", Message()), 7)
    if shape is None or get_int(shape, 3):  # unknown rank
        return None
    return tuple(get_int(dim, 1) for dim in get_messages(shape, 2))


def _replace_consts(
    out: Writer,
    data: Any,
    tensors: Mapping[str, np.ndarray],
    template: Any,
    path: Any,
    use_ema: bool = False,
    strict: bool = True,
) -> set[str]:
    """Copy the template's fields into ``out``, putting the values in ``tensors`` into its Consts
    (with ``use_ema``, a node ``X`` takes ``X/ExponentialMovingAverage`` where there is one).

    A template that still has variables (the inference graph a TF1 program writes with
    ``tf.io.write_graph``) is frozen as ``convert_variables_to_constants`` does: each variable
    becomes a Const of its checkpoint value, reads of a resource variable become ``Identity``, and
    the initialise/save/restore/training ops and whatever depends on them are left out."""
    from weightvault.formats._common import fetch_array

    used: set[str] = set()
    fields = list(iter_fields(data, path=template))
    nodes = {i: parse(v, path=template) for i, (f, w, v) in enumerate(fields) if f == 1 and w == LEN}
    names = {i: get_str(node, 1) for i, node in nodes.items()}
    frozen_handles: dict[str, int] = {}
    replaced: dict[int, bytes] = {}
    unvalued: list[str] = []
    for i, node in nodes.items():
        name, op = names[i], get_str(node, 2)
        if op != "Const" and op not in _VARIABLE_OPS:
            continue
        key = name + EMA_SUFFIX if use_ema and name + EMA_SUFFIX in tensors else name
        if key not in tensors:
            if op in _VARIABLE_OPS:
                unvalued.append(name)
            continue
        attrs = _attrs(node, template)
        arr = fetch_array(tensors, key)
        if op == "Const":
            code = get_int(attrs.get("dtype", Message()), 6)
            old = decode_tensor_proto(get_bytes(attrs.get("value", Message()), 8), path=template, tensor=name)
            want: tuple[int, ...] | None = old.shape
            dtype = old.dtype
        else:
            code = get_int(attrs.get("dtype", Message()), 6) % 100  # DT_FLOAT_REF = 101
            want = _shape_attr(attrs)
            dtype = DTYPES[TF_DTYPES[code]] if code in TF_DTYPES else arr.dtype
        if want is not None and tuple(arr.shape) != want:
            raise ShapeMismatchError(
                f"new value has shape {list(arr.shape)}, the graph's {op} has {list(want)}",
                path=path, tensor=key,
            )
        arr = np.asarray(arr, dtype=dtype, order="C")  # ascontiguousarray makes 0-d 1-d
        replaced[i] = _replace_node(fields[i][2], arr, code) if op == "Const" else _const_node(name, arr)
        if op == "VarHandleOp":
            frozen_handles[name] = code
        used.add(key)
    if unvalued and strict:
        raise TensorNotFoundError(
            f"{len(unvalued)} variables of the graph have no value among the tensors (first: "
            f"{', '.join(unvalued[:5])})",
            path=template, tensor=unvalued[0],
            hint="convert from the checkpoint the graph was trained with, or pass -w strict=false "
            "to keep them as variables (strict=False in Python)",
        )
    dropped = _training_only(nodes, names, frozen_handles, bool(used))
    for i, (field, wire, value) in enumerate(fields):
        if i in dropped:
            continue
        if i in replaced:
            out.message(1, replaced[i])
        elif i in nodes and get_str(nodes[i], 2) == "ReadVariableOp" and (
            _node_inputs(nodes[i])[:1] and _node_inputs(nodes[i])[0] in frozen_handles
        ):
            out.message(1, _identity_node(nodes[i], frozen_handles[_node_inputs(nodes[i])[0]]))
        else:
            out.field(field, wire, value)
    return used


def _training_only(
    nodes: dict[int, Message], names: dict[int, str], frozen_handles: dict[str, int], froze: bool
) -> set[int]:
    """Indices of the nodes a frozen graph leaves out: initialise/save/restore/training ops and,
    transitively, every node that reads one of them (a graph of Consts only loses nothing)."""
    if not froze:
        return set()
    gone = {names[i] for i, node in nodes.items() if _TRAINING_ONLY_OPS.match(get_str(node, 2))}
    if not gone:
        return set()
    readers: dict[str, list[int]] = {}
    for i, node in nodes.items():
        for source in _node_inputs(node):
            readers.setdefault(source, []).append(i)
    todo = list(gone)
    while todo:
        for i in readers.get(todo.pop(), []):
            if names[i] not in gone:
                gone.add(names[i])
                todo.append(names[i])
    return {i for i in nodes if names[i] in gone}


EMA_SUFFIX = "/ExponentialMovingAverage"


def _left_out(tensors: Mapping[str, Any], used: set[str], use_ema: bool) -> dict[str, str]:
    """Training-only tensors that a frozen graph has no Const for, with why they are left out."""
    from weightvault.rules.common import is_optimizer_or_bookkeeping

    out: dict[str, str] = {}
    for name in tensors:
        if name in used:
            continue
        if name + EMA_SUFFIX in used:
            out[name] = "raw value replaced by its EMA shadow (--ema)"
        elif name.endswith(EMA_SUFFIX):
            out[name] = "EMA shadow (pass --ema to freeze it in place of the raw value)"
        elif is_optimizer_or_bookkeeping(name):
            out[name] = "optimizer slot or bookkeeping, not in the graph"
    return out


class TFGraphFormat(Format):
    name = "tf_graph"
    description = "TensorFlow frozen GraphDef (.pb, weights in Const nodes) or TF1 MetaGraphDef (.meta)"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "template": "the graph to freeze into: an inference graph with variables, or a frozen "
        "GraphDef whose Const values are replaced (--template)",
        "strict": "with a template: refuse tensors that match no node, and graph variables "
        "without a value (default true)",
        "use_ema": "freeze each X/ExponentialMovingAverage in place of X (--ema)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        name = Path(path).name
        if Path(path).is_dir() or not head or not name.endswith((".pb", ".meta")):
            return False
        if head[0] != 0x0A:  # field 1, length-delimited: GraphDef.node / MetaGraphDef.meta_info_def
            return False
        if name.endswith(".meta"):
            return True
        try:  # the first NodeDef starts with its name (field 1) and has an op (field 2)
            first = next(iter_fields(head, 0, min(len(head), 4096)))
        except (ProtobufDecodeError, StopIteration):
            return len(head) >= 4096
        _, _, node = first
        fields = {f for f, _, _ in iter_fields(node)} if not isinstance(node, int) else set()
        return {1, 2} <= fields

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> TFGraphReader:
        return TFGraphReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        template: str | os.PathLike[str] | None = None,
        strict: bool = True,
        use_ema: bool = False,
        **options: Any,
    ) -> dict[str, str]:
        """Write a frozen GraphDef. With ``template``, Const values named in ``tensors`` replace the
        template's; ``strict`` refuses tensors that match no Const node, except optimizer slots,
        bookkeeping (``global_step``) and EMA shadows, which a training checkpoint carries and a
        frozen graph never has. ``use_ema`` takes each ``X/ExponentialMovingAverage`` in place of
        ``X``. Returns ``{name: why}`` for the tensors left out."""
        from weightvault.formats._common import fetch_array

        if os.fspath(path).endswith(".meta"):
            raise UnsupportedOperationError("writing .meta files is not supported", path=path)
        out = Writer()
        if template is None:
            for name in tensors:
                out.message(1, _const_node(name, fetch_array(tensors, name)))
            out.message(4, Writer().varint(1, 1))  # versions {producer: 1}
        else:
            with open(template, "rb") as f:
                data = memoryview(f.read())
            try:
                used = _replace_consts(out, data, tensors, template, path, use_ema, strict)
            except ProtobufDecodeError as exc:
                raise InvalidHeaderError(
                    f"template is not a GraphDef: {exc.message}", path=template
                ) from None
            if use_ema and not any(n.endswith(EMA_SUFFIX) for n in used):
                raise TensorNotFoundError(
                    "no Const node of the template has an ExponentialMovingAverage shadow among "
                    "the tensors",
                    path=template, hint="leave out --ema (use_ema=True in Python) to freeze the raw weights",
                )  # fmt: skip
            skipped = _left_out(tensors, used, use_ema)
            missing = [n for n in tensors if n not in used and n not in skipped]
            if strict and missing:
                raise TensorNotFoundError(
                    f"{len(missing)} tensors match no Const node of the template (first: {', '.join(missing[:5])})",
                    path=template, tensor=missing[0],
                    hint="pass -w strict=false to leave them out (strict=False in Python)",
                )
            skipped.update((n, "no Const node of this name in the template") for n in missing)
        with atomic_write(path) as f:
            f.write(out.tobytes())
        return skipped if template is not None else {}
