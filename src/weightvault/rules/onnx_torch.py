"""onnx-to-torch: ONNX already uses PyTorch's convolution layouts; what differs is Gemm/MatMul
orientation and the recurrent layers' packing and gate order (ONNX LSTM ``i,o,f,c`` vs PyTorch
``i,f,g,o``; ONNX GRU ``z,r,h`` vs ``r,z,n``, exact only with ``linear_before_reset=1``).

The roles of initializers come from the graph's nodes, which this module reads straight from the
protobuf (zero-copy over an mmap); target names are the initializer names, or for recurrent
layers the node name (``--rename``/``--map`` make them match a module).
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.core.protobuf import iter_fields
from weightvault.errors import InvalidHeaderError, UnsupportedOperationError
from weightvault.rules import Hints
from weightvault.transforms import ReorderGates, Split, Take, Transpose
from weightvault.transforms.plan import Plan, Step

__all__ = ["onnx_to_torch", "read_nodes"]


@dataclass
class OnnxNode:
    op_type: str
    name: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


def _attribute(buf: Any, path: str) -> tuple[str, Any]:
    name, value = "", None
    for num, _wire, val in iter_fields(buf, path=path):
        if num == 1:
            name = bytes(val).decode()
        elif num == 3:  # i
            value = val
        elif num == 4:  # s
            value = bytes(val).decode(errors="replace")
    return name, value


def read_nodes(path: str) -> list[OnnxNode]:
    """The graph's nodes (op type, name, inputs, int/string attributes)."""
    error: Exception
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InvalidHeaderError("empty file: no ONNX graph", path=path)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            # Parse in a helper so that every sub-view of the map is gone (with the helper's
            # frame) before the map closes; an error's traceback would keep those frames and
            # their views alive, so it is detached first.
            try:
                return _parse_nodes(mm, path)
            except Exception as exc:
                exc.__traceback__ = None
                error = exc
    raise error


def _parse_nodes(mm: mmap.mmap, path: str) -> list[OnnxNode]:
    buf = memoryview(mm)
    nodes = []
    for num, _wire, graph in iter_fields(buf, path=path):
        if num != 7:  # ModelProto.graph
            continue
        for gnum, _w, node in iter_fields(graph, path=path):
            if gnum == 1:  # GraphProto.node
                nodes.append(_node(node, path))
    return nodes


def _node(buf: Any, path: str) -> OnnxNode:
    node = OnnxNode("", "", [])
    for num, _wire, val in iter_fields(buf, path=path):
        if num == 1:
            node.inputs.append(bytes(val).decode())
        elif num == 3:
            node.name = bytes(val).decode()
        elif num == 4:
            node.op_type = bytes(val).decode()
        elif num == 5:
            key, value = _attribute(val, path)
            node.attrs[key] = value
    return node


def _module(node: OnnxNode, index: int) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", node.name) or f"{node.op_type.lower()}_{index}"


def onnx_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    plan = Plan("onnx-to-torch")
    weights = set(reader.keys())
    claimed: set[str] = set()
    for index, node in enumerate(read_nodes(reader.path)):
        if node.op_type in ("LSTM", "GRU"):
            claimed |= _recurrent(plan, reader, node, _module(node, index))
        elif node.op_type == "Gemm" and len(node.inputs) > 1 and node.inputs[1] in weights:
            # Gemm computes A @ B; with transB=1 B is already PyTorch's [out, in].
            b = node.inputs[1]
            transforms = () if node.attrs.get("transB", 0) else (Transpose((1, 0)),)
            plan.steps.append(Step(b, (b,), transforms, note="Gemm weight"))
            claimed.add(b)
        elif node.op_type == "MatMul" and len(node.inputs) > 1 and node.inputs[1] in weights:
            b = node.inputs[1]
            if len(reader.info(b).shape) == 2:
                plan.steps.append(Step(b, (b,), (Transpose((1, 0)),), note="MatMul [in, out] -> Linear [out, in]"))
                claimed.add(b)
    for name in reader.keys():
        if name not in claimed:
            plan.steps.append(Step(name, (name,), note="same layout as PyTorch"))
    return plan


def _recurrent(plan: Plan, reader: FormatReader, node: OnnxNode, module: str) -> set[str]:
    lstm = node.op_type == "LSTM"
    if not lstm and not node.attrs.get("linear_before_reset", 0):
        raise UnsupportedOperationError(
            f"GRU node {node.name!r} has linear_before_reset=0: PyTorch's GRU applies the reset gate "
            "after the recurrent matmul, so no weights reproduce it exactly",
            path=reader.path,
            tensor=node.inputs[1],
        )
    gates = ReorderGates("iofc", "ifco", 0) if lstm else ReorderGates("zrh", "rzh", 0)
    w, r = node.inputs[1], node.inputs[2]
    b = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    dirs = reader.info(w).shape[0]
    for d in range(dirs):
        sfx = "_l0" + ("_reverse" if d == 1 else "")
        plan.steps.append(Step(f"{module}.weight_ih{sfx}", (w,), (Take(0, d), gates)))
        plan.steps.append(Step(f"{module}.weight_hh{sfx}", (r,), (Take(0, d), gates)))
        if b is not None:
            plan.steps.append(Step(f"{module}.bias_ih{sfx}", (b,), (Take(0, d), Split(0, 2, 0), gates)))
            plan.steps.append(Step(f"{module}.bias_hh{sfx}", (b,), (Take(0, d), Split(0, 2, 1), gates)))
    return {w, r} | ({b} if b else set())
