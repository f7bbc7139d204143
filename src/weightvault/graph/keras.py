"""The layer graph of a Keras model, from its JSON config (``.keras`` ``config.json``, or the
``model_config`` attribute of a legacy ``model.save("x.h5")``), parsed as data: no class is looked
up, nothing is deserialized or run.

* Functional models: each layer's ``inbound_nodes`` name the layers it reads (Keras 3:
  ``{"args": [...{"config": {"keras_history": [layer, node, tensor], "shape": ...}}]}``; tf.keras
  2: ``[[[layer, node, tensor, kwargs], ...]]``); the tensor's ``shape`` labels the edge.
* Sequential models: each layer reads the one before.
* Nested models (a layer that is itself a Functional/Sequential model) become a name scope holding
  their layers, wired to the outer graph through their input and output layers; they are queued on
  a work list, never recursed into, and bounded by ``MAX_NESTING``.

Weights: a tensor of the file named ``<layer path>/<variable>`` (``inner/dense/kernel``) is placed
on the layer of the longest matching path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from weightvault.core.limits import check_depth
from weightvault.errors import InvalidHeaderError
from weightvault.graph.model import Graph, GraphBuilder, GraphNode, attr_value

__all__ = ["keras_graph"]

_MODEL_CLASSES = {"Functional", "Sequential", "Model"}
_SHOWN = ("units", "activation", "filters", "kernel_size", "strides", "padding", "pool_size", "rate",
          "axis", "epsilon", "momentum", "use_bias", "input_dim", "output_dim", "num_heads", "key_dim",
          "return_sequences", "target_shape", "dims", "batch_shape", "dtype", "trainable")
_MAX_ITEMS = 10_000  # tensors searched in one layer's inbound nodes


def keras_graph(path: str | os.PathLike[str], config: Any, tensor_names: Iterable[str] = ()) -> Graph:
    path = os.fspath(path)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise InvalidHeaderError("the Keras file has no model config (a weights-only file has no graph)", path=path)
    builder = GraphBuilder(path, "keras")
    alias: dict[str, str] = {}  # nested model path -> its output layer's path
    # (model config, path prefix, depth, values feeding the model's inputs)
    work: list[tuple[dict[str, Any], str, int, list[str]]] = [(config, "", 0, [])]
    while work:
        model, prefix, depth, feeding = work.pop()
        check_depth(depth, path=path, what="Keras model nesting")
        _model(model, prefix, depth, feeding, builder, alias, work)
    graph = builder.graph
    for node in graph.nodes:
        node.inputs = [_resolve(v, alias) for v in node.inputs]
    _attach(graph, tensor_names)
    return graph


def _resolve(value: str, alias: dict[str, str]) -> str:
    for _ in range(256):  # a chain of nested models; a cycle stops here
        if value not in alias:
            break
        value = alias[value]
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _layer_name(layer: dict[str, Any]) -> str:
    name = layer.get("name")
    if not isinstance(name, str):
        cfg = layer.get("config")
        name = cfg.get("name") if isinstance(cfg, dict) else None
    return attr_value(name) if isinstance(name, str) and name else "?"


def _model(
    model: dict[str, Any], prefix: str, depth: int, feeding: list[str], builder: GraphBuilder,
    alias: dict[str, str], work: list[tuple[dict[str, Any], str, int, list[str]]],
) -> None:
    cfg = model.get("config")
    layers = cfg.get("layers") if isinstance(cfg, dict) else None
    if not isinstance(layers, list):
        return
    layers = [layer for layer in layers if isinstance(layer, dict)]
    sequential = model.get("class_name") == "Sequential" or not any("inbound_nodes" in layer for layer in layers)
    previous = list(feeding)
    for layer in layers:
        name = _layer_name(layer)
        lpath = _join(prefix, name)
        cls = layer.get("class_name")
        cls = attr_value(cls) if isinstance(cls, str) else "?"
        if sequential:
            inputs = previous
        else:
            inputs = [_join(prefix, src) for src in _inbound(layer, builder.graph, prefix)]
            if cls == "InputLayer" and feeding:
                inputs = list(feeding)
        lcfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if cls in _MODEL_CLASSES or isinstance(lcfg.get("layers"), list):
            work.append((layer, lpath, depth + 1, inputs))
            alias[lpath] = _join(lpath, _output_layer(layer))
        else:
            attrs = {k: attr_value(lcfg[k]) for k in _SHOWN if k in lcfg and not isinstance(lcfg[k], dict)}
            builder.add(GraphNode(lpath, cls, scope=prefix, inputs=inputs, outputs=[lpath], attrs=attrs,
                                  kind="input" if cls == "InputLayer" else "layer"))
        previous = [lpath]


def _output_layer(model: dict[str, Any]) -> str:
    """The name of a nested model's (first) output layer: ``output_layers`` or its last layer."""
    cfg = model.get("config") if isinstance(model.get("config"), dict) else {}
    outs = cfg.get("output_layers")
    if isinstance(outs, list) and outs:
        first = outs[0]
        if isinstance(first, list) and first and isinstance(first[0], str):
            return first[0]
        if isinstance(first, str):
            return first
    layers = [layer for layer in cfg.get("layers") or [] if isinstance(layer, dict)]
    return _layer_name(layers[-1]) if layers else "?"


def _inbound(layer: dict[str, Any], graph: Graph, prefix: str) -> list[str]:
    """Names of the layers a layer reads, in order, from both inbound-node formats (no recursion)."""
    found: list[str] = []
    stack: list[Any] = [layer.get("inbound_nodes")]
    budget = _MAX_ITEMS
    while stack and budget > 0:
        item = stack.pop()
        budget -= 1
        if isinstance(item, dict):
            hist = item.get("keras_history") if "keras_history" in item else None
            conf = item.get("config")
            if isinstance(conf, dict) and isinstance(conf.get("keras_history"), list):
                hist = conf["keras_history"]
                shape = conf.get("shape")
                if hist and isinstance(hist[0], str) and isinstance(shape, list):
                    graph.shapes.setdefault(_join(prefix, hist[0]), attr_value(shape))
            if isinstance(hist, list) and hist and isinstance(hist[0], str):
                found.append(hist[0])
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            # tf.keras 2: [layer_name, node_index, tensor_index, kwargs]
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int) and isinstance(item[2], int):
                found.append(item[0])
                continue
            stack.extend(reversed(item))
    return list(dict.fromkeys(found))


def _attach(graph: Graph, tensor_names: Iterable[str]) -> None:
    by_path = {node.name: node for node in graph.nodes}
    for tensor in tensor_names:
        parts = tensor.split("/")
        placed = False
        # longest layer path first; then without leading parts (a legacy file's model-name prefix)
        for start in range(min(len(parts) - 1, 4)):
            for end in range(len(parts) - 1, start, -1):
                node = by_path.get("/".join(parts[start:end]))
                if node is not None:
                    node.weights.append(tensor)
                    placed = True
                    break
            if placed:
                break
