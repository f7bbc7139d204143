"""The FX graph of a ``torch.export.save`` archive (``.pt2``), read from its JSON, never unpickled.

The archive is a zip whose ``<name>/models/model.json`` is the serialized ``ExportedProgram``:
``graph_module.graph`` has ``nodes`` (``target`` like ``torch.ops.aten.linear.default``, ``inputs``
whose ``arg`` holds ``{"as_tensor": {"name"}}`` or ``{"as_tensors": [...]}``, ``outputs``,
``metadata.nn_module_stack``: the module path, used as the scope) and ``tensor_values`` (dtype and
``sizes`` of every value); ``graph_module.signature.input_specs`` maps the placeholders of
parameters and buffers to their names (``p_fc_weight`` -> ``fc.weight``), which are the weights.

Only the JSON member is read (size-checked first); pickled sample inputs and constants are never
touched. The viewer opens ``.pt2`` files with the ``torch_export`` format
(:mod:`weightvault.formats.torch_export`, which reads the weights without unpickling either) and
draws this graph in its Graph tab, each node carrying the weights its placeholders name.

Two things the signature does not say are added from the weights: tied weights are one placeholder
named after one of their FQNs (``b.weight``), so every alias of a weight (``a.weight``, from
the reader's :attr:`~weightvault.abc.format.FormatReader.aliases`) goes on the same nodes; and a
parameter or buffer no op reads (``bn.num_batches_tracked`` in eval mode) goes on the nodes of its
module's scope, so clicking a module's node lists all its tensors.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import Any

from weightvault.errors import InvalidHeaderError, ResourceLimitError
from weightvault.graph.model import Graph, GraphBuilder, GraphNode, attr_value

__all__ = ["torch_export_graph"]

MAX_JSON_BYTES = 256 << 20


def torch_export_graph(path: str | os.PathLike[str], aliases: dict[str, str] | None = None) -> Graph:
    """The program's graph; ``aliases`` (name -> the name it is the same tensor as) attach tied
    weights to the nodes of the name the signature uses."""
    path = os.fspath(path)
    program = _program(path)
    gm = program.get("graph_module")
    graph = gm.get("graph") if isinstance(gm, dict) else None
    if not isinstance(graph, dict):
        raise InvalidHeaderError("models/model.json has no graph_module.graph", path=path)
    signature = gm.get("signature") if isinstance(gm.get("signature"), dict) else {}
    weights, user_inputs = _input_specs(signature)
    builder = GraphBuilder(path, "torch_export")
    out = builder.graph
    values = graph.get("tensor_values") if isinstance(graph.get("tensor_values"), dict) else {}
    for name, meta in list(values.items()):
        if isinstance(meta, dict) and isinstance(meta.get("sizes"), list):
            out.shapes[str(name)] = [s.get("as_int", "?") if isinstance(s, dict) else "?" for s in meta["sizes"][:64]]
    for name in user_inputs:
        builder.add(GraphNode(name, "Input", kind="input", outputs=[name]))
    for node in graph.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        target = str(node.get("target", "?"))
        op = target.removeprefix("torch.ops.").removesuffix(".default")
        inputs = _tensor_names(node.get("inputs"))
        outputs = _tensor_names(node.get("outputs"))
        name = str(node.get("name") or (outputs[0] if outputs else op))
        meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
        attrs = {"target": attr_value(target)}
        builder.add(GraphNode(name, op, scope=_scope(meta.get("nn_module_stack")), inputs=inputs, outputs=outputs,
                              attrs=attrs, weights=[weights[i] for i in inputs if i in weights]))
    _attach_tied_and_unused(out.nodes, weights, aliases or {})
    for spec in signature.get("output_specs") or []:
        names = _tensor_names(spec)
        if names and isinstance(spec, dict) and "user_output" in spec:
            builder.add(GraphNode(f"{names[0]} (output)", "Output", kind="output", inputs=names[:1]))
    return out


def _attach_tied_and_unused(nodes: list[GraphNode], weights: dict[str, str], aliases: dict[str, str]) -> None:
    """Tied names on the nodes of their twin; weights no op reads on the nodes of their module."""
    groups: dict[str, list[str]] = {}
    for name, target in aliases.items():
        groups.setdefault(target, [target]).append(name)
    for node in nodes:
        extra = [n for w in node.weights for n in groups.get(aliases.get(w, w), ()) if n not in node.weights]
        node.weights.extend(dict.fromkeys(extra))
    used = {w for node in nodes for w in node.weights}
    by_scope: dict[str, list[GraphNode]] = {}
    for node in nodes:
        if node.scope:
            by_scope.setdefault(node.scope, []).append(node)
    for name in weights.values():
        if name in used or "." not in name:
            continue
        for node in by_scope.get(name.rsplit(".", 1)[0].replace(".", "/"), []):
            node.weights.append(name)


def _program(path: str) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith("/models/model.json") or i.filename == "models/model.json"]
            if not members:
                raise InvalidHeaderError("not a torch.export archive: no models/model.json", path=path)
            info = members[0]
            if info.file_size > MAX_JSON_BYTES:
                raise ResourceLimitError(f"{info.filename} claims {info.file_size:,} bytes (limit {MAX_JSON_BYTES:,})", path=path)
            with zf.open(info) as f:
                text = f.read(MAX_JSON_BYTES + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OSError) as exc:
        raise InvalidHeaderError(f"not a readable torch.export archive: {exc}", path=path) from None
    if len(text) > MAX_JSON_BYTES:
        raise ResourceLimitError("models/model.json is larger than its header says", path=path)
    try:
        program = json.loads(text)
    except RecursionError:
        raise ResourceLimitError("models/model.json is nested too deeply", path=path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidHeaderError(f"models/model.json is not JSON: {exc}", path=path) from None
    if not isinstance(program, dict):
        raise InvalidHeaderError("models/model.json is not an object", path=path)
    return program


def _input_specs(signature: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Placeholder -> parameter/buffer name, and the user inputs' placeholders."""
    weights: dict[str, str] = {}
    user: list[str] = []
    for spec in signature.get("input_specs") or []:
        if not isinstance(spec, dict):
            continue
        for kind, key in (("parameter", "parameter_name"), ("buffer", "buffer_name"), ("tensor_constant", "tensor_constant_name")):
            body = spec.get(kind)
            if isinstance(body, dict) and isinstance(body.get("arg"), dict):
                weights[str(body["arg"].get("name"))] = str(body.get(key))
        body = spec.get("user_input")
        if isinstance(body, dict):
            user.extend(_tensor_names(body))
    return weights, user


def _tensor_names(obj: Any) -> list[str]:
    """Every ``{"as_tensor": {"name": ...}}`` inside ``obj``, in order, found without recursion."""
    found: list[str] = []
    stack = [obj]
    budget = 100_000
    while stack and budget:
        budget -= 1
        item = stack.pop()
        if isinstance(item, dict):
            tensor = item.get("as_tensor")
            if isinstance(tensor, dict) and isinstance(tensor.get("name"), str):
                found.append(tensor["name"])
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def _scope(stack: Any) -> str:
    """``"L__self__,,M;L__self__fc,fc,torch.nn.Linear"`` -> ``"fc"`` (the innermost module path)."""
    if not isinstance(stack, str) or not stack:
        return ""
    parts = stack.split(";")[-1].split(",")
    return parts[1].replace(".", "/") if len(parts) >= 2 else ""
