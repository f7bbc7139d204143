"""The graph of an ONNX model: nodes, graph inputs/outputs, initializers as the nodes' weights.

Read with the wire-format decoder of :mod:`weightvault.core.protobuf` from a read-only mmap (the
initializers' bytes are never copied). Field numbers (onnx.proto): ModelProto.graph = 7;
GraphProto node = 1, initializer = 5, input = 11, output = 12, value_info = 13; NodeProto input = 1,
output = 2, name = 3, op_type = 4, attribute = 5, domain = 7; AttributeProto name = 1, f = 2,
i = 3, s = 4, t = 5, g = 6, floats = 7, ints = 8, strings = 9, graphs = 11; ValueInfoProto
name = 1, type = 2; TypeProto.tensor_type = 1 -> elem_type = 1, shape = 2 -> dim = 1 ->
dim_value = 1 | dim_param = 2.

Subgraphs (``If``/``Loop``/``Scan`` bodies) become nodes in the scope ``<node>/<attribute>``, read
with a work list (no recursion); their depth is bounded by ``MAX_NESTING``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Any

from weightvault.core.limits import check_depth
from weightvault.core.protobuf import (
    FIXED32,
    VARINT,
    Message,
    ProtobufDecodeError,
    get_int,
    get_message,
    get_messages,
    get_packed,
    get_str,
    parse,
    to_int64,
)
from weightvault.errors import InvalidHeaderError, TruncatedFileError
from weightvault.formats.onnx import ONNX_DTYPES
from weightvault.graph.model import Graph, GraphBuilder, GraphNode, attr_value, scope_of

__all__ = ["onnx_graph"]


def onnx_graph(path: str | os.PathLike[str]) -> Graph:
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise TruncatedFileError("empty file", path=path)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _read(memoryview(mm), path)
    except ProtobufDecodeError as exc:
        raise InvalidHeaderError(f"not an ONNX model: {exc.message}", path=path) from None
    finally:
        # Slices of the map may still be alive in an exception's frames: then the map is closed
        # by the garbage collector once they are gone (the graph itself holds only copies).
        with contextlib.suppress(BufferError):
            mm.close()


def _read(buf: memoryview, path: str) -> Graph:
    model = parse(buf, path=path)
    graph = get_message(model, 7, path=path)
    if graph is None:
        raise InvalidHeaderError("not an ONNX model: no graph field", path=path)
    builder = GraphBuilder(path, "onnx")
    out = builder.graph
    producer = get_str(model, 2)
    if producer:
        out.notes.append(f"producer: {producer} {get_str(model, 3)}".strip())
    # (graph message, scope prefix, depth): subgraphs are queued, never recursed into
    work: list[tuple[Message, str, int]] = [(graph, "", 0)]
    top = True
    initializers: set[str] = set()
    while work:
        g, prefix, depth = work.pop()
        check_depth(depth, path=path, what="ONNX subgraph nesting")
        initializers |= _values(g, builder, path, top)
        for node_msg in get_messages(g, 1, path=path):
            node = _node(node_msg, prefix, path)
            for attr_name, sub in _subgraphs(node_msg, path):
                work.append((sub, f"{node.scope}/{_last(node.name)}/{attr_name}".strip("/"), depth + 1))
            builder.add(node)
        top = False
    for node in out.nodes:  # an initializer a node reads is one of its weights
        node.weights = [i for i in node.inputs if i in initializers]
    return out


def _last(name: str) -> str:
    return [p for p in name.split("/") if p][-1] if name.strip("/") else name


def _values(g: Message, builder: GraphBuilder, path: str, top: bool) -> set[str]:
    """Shapes of graph inputs/outputs/value_info and initializers; Input and Output nodes (top
    graph). Returns the initializers' names."""
    out = builder.graph
    initializers: set[str] = set()
    for t in get_messages(g, 5, path=path):
        name = get_str(t, 8)
        initializers.add(name)
        out.shapes[name] = [int(d) for d in get_packed(t, 1, "int64", path=path)[:64].tolist()]
        out.dtypes[name] = ONNX_DTYPES.get(get_int(t, 2), f"type {get_int(t, 2)}")
    for field in (11, 12, 13):
        for vi in get_messages(g, field, path=path):
            name = get_str(vi, 1)
            shape, dtype = _type_of(vi, path)
            if shape is not None:
                out.shapes[name] = shape
            if dtype is not None:
                out.dtypes[name] = dtype
    if not top:
        return initializers
    for vi in get_messages(g, 11, path=path):
        name = get_str(vi, 1)
        if name and name not in initializers:  # old exporters list initializers as inputs too
            builder.add(GraphNode(name, "Input", kind="input", outputs=[name]))
    for vi in get_messages(g, 12, path=path):
        name = get_str(vi, 1)
        if name:
            builder.add(GraphNode(f"{name} (output)", "Output", kind="output", inputs=[name]))
    return initializers


def _type_of(vi: Message, path: str) -> tuple[list[Any] | None, str | None]:
    tp = get_message(vi, 2, path=path)
    tensor = get_message(tp, 1, path=path) if tp is not None else None
    if tensor is None:
        return None, None
    dtype = ONNX_DTYPES.get(get_int(tensor, 1)) if 1 in tensor else None
    shape_msg = get_message(tensor, 2, path=path)
    if shape_msg is None:
        return None, dtype
    dims: list[Any] = []
    for dim in get_messages(shape_msg, 1, path=path)[:64]:
        if 1 in dim:
            dims.append(get_int(dim, 1))
        elif 2 in dim:
            dims.append(attr_value(get_str(dim, 2)))
        else:
            dims.append("?")
    return dims, dtype


def _node(msg: Message, prefix: str, path: str) -> GraphNode:
    name = get_str(msg, 3)
    op = get_str(msg, 4) or "?"
    domain = get_str(msg, 7)
    inputs = [_text(v) for v in msg.get(1, []) if not isinstance(v, int)]
    outputs = [_text(v) for v in msg.get(2, []) if not isinstance(v, int)]
    if not name:
        name = f"{op}_{outputs[0]}" if outputs else op
    # torch's exporter names nodes by module path ("/blocks.3/attn/MatMul"): "." separates scopes
    # too, so 300 blocks collapse into one "blocks" box, not 300 boxes side by side.
    scope = "/".join(p for p in (prefix, scope_of(name).replace(".", "/")) if p)
    attrs: dict[str, Any] = {}
    if domain:
        attrs["domain"] = attr_value(domain)
    for a in get_messages(msg, 5, path=path)[:64]:
        attrs[attr_value(get_str(a, 1)) or "?"] = _attr(a, path)
    node = GraphNode(name, op, scope=scope, inputs=[i for i in inputs if i], outputs=[o for o in outputs if o], attrs=attrs)
    return node


def _text(v: Any) -> str:
    return bytes(v).decode("utf-8", "replace")


def _attr(a: Message, path: str) -> Any:
    """One attribute, as a short JSON value (tensors and graphs as a description)."""
    if 2 in a and a.wire_types.get(2) == FIXED32:
        import struct

        return attr_value(struct.unpack("<f", int(a[2][-1]).to_bytes(4, "little"))[0])
    if 3 in a and a.wire_types.get(3) == VARINT:
        return to_int64(int(a[3][-1]))
    if 4 in a:
        return attr_value(a[4][-1])
    if 5 in a:
        t = get_message(a, 5, path=path) or Message()
        dims = get_packed(t, 1, "int64", path=path)[:8].tolist()
        return f"tensor {ONNX_DTYPES.get(get_int(t, 2), '?')} {dims}"
    if 6 in a or 11 in a:
        return "subgraph"
    if 7 in a:
        return attr_value([round(float(x), 6) for x in get_packed(a, 7, "float", path=path)[:17].tolist()])
    if 8 in a:
        return attr_value([int(x) for x in get_packed(a, 8, "int64", path=path)[:17].tolist()])
    if 9 in a:
        return attr_value([_text(v) for v in a[9][:17] if not isinstance(v, int)])
    return None


def _subgraphs(msg: Message, path: str) -> list[tuple[str, Message]]:
    found = []
    for a in get_messages(msg, 5, path=path):
        name = get_str(a, 1) or "graph"
        for field in (6, 11):
            for i, v in enumerate(a.get(field, [])):
                if isinstance(v, int):
                    raise ProtobufDecodeError("ONNX attribute graph is a number", path=path)
                found.append((name if field == 6 else f"{name}{i}", parse(v, path=path)))
    return found
