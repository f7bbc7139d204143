"""The graph of a TensorFlow ``MetaGraphDef`` (``.meta``) or frozen ``GraphDef`` (``.pb``).

Field numbers (graph.proto, node_def.proto, attr_value.proto, meta_graph.proto): MetaGraphDef
graph_def = 2; GraphDef node = 1; NodeDef name = 1, op = 2, input = 3, device = 4, attr = 5
(map entries: key = 1, value = 2); AttrValue list = 1, s = 2, i = 3, f = 4, b = 5, type = 6,
shape = 7, tensor = 8; ListValue shape = 7; TensorShapeProto dim = 2 (size = 1), unknown_rank = 3;
TensorProto dtype = 1, tensor_shape = 2.

An input ``"x"`` is output 0 of node ``x``, ``"x:1"`` its output 1, ``"^x"`` a control dependency
(drawn like data, with no shape). Shapes come from the ``_output_shapes`` attribute when the graph
was written with it, else from ``shape`` (variables, placeholders) and ``Const`` values.

Weights: a variable node (``VariableV2``, ``VarHandleOp``...) or a ``Const`` holds a tensor named
like the node; it is listed on that node and on every op that reads it directly or through the
``Identity`` TF inserts (``layer1/weights/read``), so clicking a ``MatMul`` shows its weights.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from weightvault.core.protobuf import (
    FIXED32,
    Message,
    ProtobufDecodeError,
    get_bytes,
    get_int,
    get_message,
    get_messages,
    get_packed,
    get_str,
    parse,
)
from weightvault.errors import InvalidHeaderError
from weightvault.formats.tf_bundle import _TF_DTYPE_NAMES, TF_DTYPES
from weightvault.graph.model import Graph, GraphBuilder, GraphNode, attr_value, scope_of

__all__ = ["tf_graph"]

_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp", "VariableV3"}
_PASS_THROUGH = {"Identity", "ReadVariableOp"}
_SHOWN_ATTRS = ("T", "dtype", "shape", "value", "strides", "padding", "data_format", "ksize", "dilations",
                "transpose_a", "transpose_b", "container", "shared_name", "N", "axis", "use_locking",
                "validate_shape", "keep_dims", "epsilon", "is_training", "Tidx", "SrcT", "DstT")


def tf_graph(path: str | os.PathLike[str]) -> Graph:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = memoryview(f.read())
    meta = path.endswith(".meta")
    try:
        if meta:
            graph_def = get_message(parse(data, path=path), 2, path=path)
            if graph_def is None:
                raise InvalidHeaderError("MetaGraphDef has no graph_def", path=path)
        else:
            graph_def = parse(data, path=path)
        return _read(graph_def, path, "tf_meta_graph" if meta else "tf_frozen_graph")
    except ProtobufDecodeError as exc:
        raise InvalidHeaderError(f"not a TensorFlow graph: {exc.message}", path=path) from None


def _read(graph_def: Message, path: str, source: str) -> Graph:
    builder = GraphBuilder(path, source)
    out = builder.graph
    weight_ops: dict[str, str] = {}  # node name -> op, for variables and Consts
    for msg in get_messages(graph_def, 1, path=path):
        name = get_str(msg, 1)
        op = get_str(msg, 2) or "?"
        attrs = _attrs(msg, path)
        inputs = [_value_name(_text(v)) for v in msg.get(3, []) if not isinstance(v, int)]
        node = GraphNode(name, op, scope=scope_of(name), inputs=[i for i in inputs if i], kind="op")
        if op in _VARIABLE_OPS:
            node.kind = "variable"
            weight_ops[name] = op
        elif op == "Const":
            node.kind = "constant"
            weight_ops[name] = op
        elif op == "Placeholder":
            node.kind = "input"
        shapes = _output_shapes(attrs.get("_output_shapes"), path)
        own = _own_shape(op, attrs, path)
        if own is not None and not shapes:
            shapes = [own]
        count = max(1, len(shapes))
        node.outputs = [name if i == 0 else f"{name}:{i}" for i in range(count)]
        for value, shape in zip(node.outputs, shapes):
            if shape is not None:
                out.shapes[value] = shape
        dtype = _dtype(attrs.get("T") or attrs.get("dtype"), path)
        if dtype is not None:
            out.dtypes[name] = dtype
        node.attrs = {k: _attr(attrs[k], path) for k in _SHOWN_ATTRS if k in attrs}
        device = get_str(msg, 4)
        if device:
            node.attrs["device"] = attr_value(device)
        builder.add(node)
    if get_message(graph_def, 2, path=path) is not None:
        out.notes.append("the graph's function library (tf.function bodies) is not drawn")
    _attach_weights(out, weight_ops)
    return out


def _text(v: Any) -> str:
    return bytes(v).decode("utf-8", "replace")


def _value_name(raw: str) -> str:
    """``"x:0"`` -> ``"x"``; ``"^x"`` -> ``"x"`` (a control input); ``"x:1"`` stays."""
    name = raw[1:] if raw.startswith("^") else raw
    base, sep, index = name.rpartition(":")
    if sep and index == "0":
        return base
    return name


def _attrs(node: Message, path: str) -> dict[str, Message]:
    out: dict[str, Message] = {}
    for entry in get_messages(node, 5, path=path)[:256]:
        out[get_str(entry, 1)] = get_message(entry, 2, path=path) or Message()
    return out


def _shape(msg: Message | None, path: str) -> list[Any] | None:
    if msg is None or get_int(msg, 3):
        return None
    dims = [get_int(d, 1) for d in get_messages(msg, 2, path=path)[:64]]
    return [d if d >= 0 else None for d in dims]  # -1: unknown (the batch), shown as "?"


def _output_shapes(attr: Message | None, path: str) -> list[list[Any] | None]:
    if attr is None:
        return []
    lst = get_message(attr, 1, path=path)
    if lst is None:
        return []
    return [_shape(parse(v, path=path), path) for v in lst.get(7, [])[:64] if not isinstance(v, int)]


def _own_shape(op: str, attrs: dict[str, Message], path: str) -> list[Any] | None:
    if "shape" in attrs:
        return _shape(get_message(attrs["shape"], 7, path=path), path)
    if op == "Const" and "value" in attrs:
        tensor = get_message(attrs["value"], 8, path=path)
        if tensor is not None:
            return _shape(get_message(tensor, 2, path=path), path)
    return None


def _dtype(attr: Message | None, path: str) -> str | None:
    if attr is None or 6 not in attr:
        return None
    code = get_int(attr, 6) % 100  # *_REF types are 100 + base
    return TF_DTYPES.get(code) or _TF_DTYPE_NAMES.get(code) or f"type {code}"


def _attr(attr: Message, path: str) -> Any:
    """An AttrValue as a short JSON value."""
    if 6 in attr:
        return _dtype(attr, path)
    if 7 in attr:
        return _shape(get_message(attr, 7, path=path), path)
    if 8 in attr:
        tensor = get_message(attr, 8, path=path) or Message()
        shape = _shape(get_message(tensor, 2, path=path), path)
        return f"tensor {_dtype(Message({6: tensor.get(1, [0])}), path)} {shape}"
    if 2 in attr:
        return attr_value(get_bytes(attr, 2))
    if 3 in attr:
        return get_int(attr, 3)
    if 4 in attr and attr.wire_types.get(4) == FIXED32:
        return attr_value(struct.unpack("<f", int(attr[4][-1]).to_bytes(4, "little"))[0])
    if 5 in attr:
        return bool(get_int(attr, 5))
    if 1 in attr:
        lst = get_message(attr, 1, path=path) or Message()
        if 3 in lst:
            return attr_value([int(x) for x in get_packed(lst, 3, "int64", path=path)[:17].tolist()])
        if 2 in lst:
            return attr_value([_text(v) for v in lst[2][:17] if not isinstance(v, int)])
        return "list"
    return None


def _attach_weights(graph: Graph, weight_ops: dict[str, str]) -> None:
    """Variables and Consts on themselves, on their ``Identity`` readers, and on those readers' users."""
    holder: dict[str, str] = {}  # value name -> the variable/const it carries
    for name in weight_ops:
        holder[name] = name
    for node in graph.nodes:  # one hop through Identity / ReadVariableOp ("w/read")
        if node.op in _PASS_THROUGH and node.inputs and node.inputs[0] in weight_ops:
            holder[node.name] = node.inputs[0]
    for node in graph.nodes:
        found = [holder[i] for i in node.inputs if i in holder]
        if node.name in weight_ops:
            found.insert(0, node.name)
        node.weights = list(dict.fromkeys(found))
