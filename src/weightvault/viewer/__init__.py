"""A local web viewer for weight files: a tree of tensors, statistics, histograms, heat-maps,
a compare view and training-run charts, over a small JSON API (see ``docs/viewer.md``).

Start it with ``weightvault view PATH [PATH2]`` or, from Python::

    from weightvault.viewer import ViewerServer
    with ViewerServer(["model.safetensors"]).start() as server:
        print(server.url)
"""

from __future__ import annotations

from weightvault.viewer.server import ViewerServer

__all__ = ["ViewerServer"]
