"""The format-independent graph: nodes with op type, inputs and outputs by value name, weights.

Each source module (:mod:`.onnx`, :mod:`.tf`, :mod:`.keras`, :mod:`.torch_export`) fills a
:class:`GraphBuilder`; :meth:`Graph.to_json` turns it into the viewer's JSON (nodes, edges, scopes).

Limits, because a graph file is untrusted input:

* at most :data:`MAX_NODES` nodes and :data:`MAX_EDGES` edges (a :class:`ResourceLimitError` names
  the file and the count), so a file cannot make the server or the page build a huge layout;
* name scopes deeper than :data:`MAX_SCOPE_DEPTH` are cut there (the rest stays in the node's name);
* scopes, edges and aliases are built with loops, never recursion, so no nesting depth or cycle can
  exhaust the stack; cycles (TF while loops, a hostile ONNX file) are kept as edges and left to the
  layout's cycle breaking;
* attribute values are short strings or numbers (:func:`attr_value`), never objects from the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from weightvault.errors import ResourceLimitError

__all__ = [
    "MAX_ATTRS",
    "MAX_EDGES",
    "MAX_NODES",
    "MAX_SCOPE_DEPTH",
    "Graph",
    "GraphBuilder",
    "GraphNode",
    "attr_value",
]

MAX_NODES = 50_000
MAX_EDGES = 250_000
MAX_SCOPE_DEPTH = 32
MAX_ATTRS = 40
_MAX_TEXT = 160
_MAX_LIST = 16


def attr_value(value: Any) -> Any:
    """A JSON-safe, short rendering of an attribute: numbers as they are, text cut, lists shortened."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[: _MAX_TEXT * 4]).decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[: _MAX_TEXT - 1] + "…"
    if isinstance(value, (list, tuple)):
        items = [attr_value(v) if isinstance(v, (bool, int, float, str, bytes)) or v is None else str(type(v).__name__)
                 for v in list(value)[:_MAX_LIST]]
        if len(value) > _MAX_LIST:
            items.append(f"… {len(value)} in all")
        return items
    return attr_value(str(value))


@dataclass
class GraphNode:
    name: str
    op: str
    scope: str = ""  # "/"-joined name scope; "" = top level
    inputs: list[str] = field(default_factory=list)  # value names consumed
    outputs: list[str] = field(default_factory=list)  # value names produced
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: list[str] = field(default_factory=list)  # names of tensors the file holds
    kind: str = "op"  # op | input | output | variable | constant | layer


@dataclass
class Graph:
    path: str
    source: str  # "onnx", "tf_meta_graph", "tf_frozen_graph", "keras", "torch_export"
    nodes: list[GraphNode]
    shapes: dict[str, list[Any]] = field(default_factory=dict)  # value name -> dims (int or str)
    dtypes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self, tensor_names: set[str] | None = None) -> dict[str, Any]:
        """Nodes, edges (producer -> consumer per value), scopes and the weight -> node index.

        ``tensor_names``: the tensors the opened file holds; a node's weights are limited to them
        (what the page can show), and the file's other tensors are listed as ``unattached``.
        """
        nodes = self.nodes
        producer: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for out in node.outputs:
                producer.setdefault(out, i)
        edges: list[dict[str, Any]] = []
        seen: set[tuple[int, int, str]] = set()
        for i, node in enumerate(nodes):
            for value in node.inputs:
                src = producer.get(value)
                if src is None or (src, i, value) in seen:
                    continue
                seen.add((src, i, value))
                if len(edges) >= MAX_EDGES:
                    raise ResourceLimitError(
                        f"the graph has more than {MAX_EDGES:,} edges; the viewer does not draw graphs this large",
                        path=self.path,
                    )
                edges.append({"source": src, "target": i, "tensor": value,
                              "shape": self.shapes.get(value), "dtype": self.dtypes.get(value)})
        weights: dict[str, list[int]] = {}
        out_nodes = []
        for i, node in enumerate(nodes):
            held = [w for w in dict.fromkeys(node.weights) if tensor_names is None or w in tensor_names]
            for w in held:
                weights.setdefault(w, []).append(i)
            out_nodes.append({
                "id": i, "name": node.name, "op": node.op, "kind": node.kind, "scope": node.scope,
                "attrs": node.attrs, "weights": held,
                "inputs": node.inputs[:64], "outputs": node.outputs[:64],
            })
        unattached = sorted(tensor_names - weights.keys()) if tensor_names is not None else []
        return {
            "source": self.source,
            "node_count": len(nodes),
            "edge_count": len(edges),
            "nodes": out_nodes,
            "edges": edges,
            "scopes": _scopes(nodes),
            "weights": weights,
            "unattached": unattached[:1000],
            "unattached_count": len(unattached),
            "notes": self.notes,
        }


def _scopes(nodes: list[GraphNode]) -> list[dict[str, Any]]:
    """Every scope with its parent and the number of nodes inside (at any depth); built by loops."""
    counts: dict[str, int] = {}
    for node in nodes:
        scope = node.scope
        while scope:  # each ancestor once: "a/b/c", "a/b", "a"
            counts[scope] = counts.get(scope, 0) + 1
            cut = scope.rfind("/")
            scope = scope[:cut] if cut > 0 else ""
    out = []
    for scope in sorted(counts):
        cut = scope.rfind("/")
        out.append({"id": scope, "parent": scope[:cut] if cut > 0 else "", "name": scope[cut + 1 :], "nodes": counts[scope]})
    return out


def scope_of(name: str, sep: str = "/") -> str:
    """The name scope of an op name: ``"layer1/weights/Assign"`` -> ``"layer1/weights"``.

    Empty parts are dropped (ONNX names start with "/"), and scopes are cut at
    :data:`MAX_SCOPE_DEPTH` levels."""
    parts = [p for p in name.split(sep)[:-1] if p]
    return "/".join(parts[:MAX_SCOPE_DEPTH])


class GraphBuilder:
    """Collects nodes, refusing more than :data:`MAX_NODES`."""

    def __init__(self, path: str | os.PathLike[str], source: str) -> None:
        self.graph = Graph(os.fspath(path), source, [])

    def add(self, node: GraphNode) -> GraphNode:
        if len(self.graph.nodes) >= MAX_NODES:
            raise ResourceLimitError(
                f"the graph has more than {MAX_NODES:,} nodes; the viewer does not draw graphs this large",
                path=self.graph.path,
            )
        node.scope = "/".join([p for p in node.scope.split("/") if p][:MAX_SCOPE_DEPTH])
        if len(node.attrs) > MAX_ATTRS:
            node.attrs = dict(list(node.attrs.items())[:MAX_ATTRS])
        self.graph.nodes.append(node)
        return node
