"""Model graphs read from weight files, for the viewer's Graph tab (see docs/viewer.md).

:func:`extract_graph` returns the :class:`~weightvault.graph.model.Graph` of an opened file, or
``None`` when its format carries no graph. Every source is parsed as bytes or JSON; nothing from a
file is executed (no pickle, no ``torch.jit.load``, no Keras deserialization).

| source | graph | weights on the nodes |
|---|---|---|
| ONNX ``.onnx`` | nodes, graph inputs/outputs, subgraphs as scopes | initializers read by a node |
| TF ``.meta`` (MetaGraphDef) | the whole training graph (variables, optimizer, Saver ops) | the checkpoint beside it (``PREFIX.index``) |
| TF frozen ``.pb`` | GraphDef nodes | ``Const`` values |
| TF checkpoint ``PREFIX`` (or its directory) with ``PREFIX.meta`` beside | that ``.meta``'s graph | the checkpoint's variables |
| Keras ``.keras`` / legacy ``.h5`` with ``model_config`` | layers, connections, nested models as scopes | ``<layer>/<variable>`` tensors |
| ``torch.export`` ``.pt2`` archive | the exported program's FX graph (JSON) | parameters, buffers and constants by FQN (tied names on every reader) |

TorchScript archives are not drawn: their graph is TorchScript source code, which would have to be
compiled (that is, executed by ``torch.jit.load``) to become a graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weightvault.graph.model import MAX_EDGES, MAX_NODES, Graph, GraphNode

__all__ = ["MAX_EDGES", "MAX_NODES", "Graph", "GraphNode", "extract_graph", "graph_source"]


def graph_source(path: str | os.PathLike[str], fmt: str, prefix: str | None = None) -> tuple[str, Path] | None:
    """Which graph a file of format ``fmt`` has, and the file it is read from; None if none.

    ``prefix``: a TF checkpoint's prefix as its reader resolved it (a run directory given as the
    path opens its latest checkpoint)."""
    p = Path(path)
    if fmt == "onnx":
        return "onnx", p
    if fmt == "tf_graph":
        return "tf", p
    if fmt in ("tf_bundle", "tf_v1"):
        prefix = prefix or os.fspath(p)
        for suffix in (".index", ".meta"):
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        meta = Path(prefix + ".meta")
        return ("tf", meta) if meta.is_file() else None
    if fmt == "keras":
        return "keras", p
    if fmt == "torch_export":
        return "torch_export", p
    return None


def extract_graph(path: str | os.PathLike[str], reader: Any) -> Graph | None:
    """The graph of the file ``reader`` has open (``path`` as the user gave it), or None."""
    from weightvault.storage.location import is_url

    if is_url(path):
        return _remote_graph(os.fspath(path), reader)
    prefix = getattr(reader, "prefix", None)
    found = graph_source(path, reader.format, os.fspath(prefix) if isinstance(prefix, (str, os.PathLike)) else None)
    if found is None:
        return None
    kind, source = found
    if kind == "onnx":
        from weightvault.graph.onnx import onnx_graph

        return onnx_graph(source)
    if kind == "tf":
        from weightvault.graph.tf import tf_graph

        graph = tf_graph(source)
        if source != Path(path):
            graph.notes.append(f"graph read from {source.name}, beside the checkpoint")
        return graph
    if kind == "keras":
        from weightvault.graph.keras import keras_graph

        config = (reader.metadata.get("keras") or {}).get("config")
        if config is None:
            return None
        return keras_graph(path, config, reader.keys())
    from weightvault.graph.torch_export import torch_export_graph

    return torch_export_graph(source, aliases=reader.aliases)


def _remote_graph(url: str, reader: Any) -> Graph | None:
    """The graph of a file on object storage. Formats that carry a graph are opened from a private
    local copy (:func:`weightvault.storage.reader.open_remote`; native checkpoints and safetensors,
    read by ranges, carry none): the graph is read from that copy, and errors name the URL."""
    from weightvault.errors import WeightVaultError
    from weightvault.storage.reader import as_url_error

    local = getattr(reader, "path", None)
    if getattr(reader, "source_url", None) is None or not isinstance(local, (str, os.PathLike)):
        return None
    local = os.fspath(local)
    try:
        graph = extract_graph(local, reader)
    except WeightVaultError as exc:
        raise as_url_error(exc, local, url)  # noqa: B904 - the same error, renamed
    if graph is not None:
        graph.path = url
        graph.notes[:] = [note.replace(local, url) for note in graph.notes]
    return graph
