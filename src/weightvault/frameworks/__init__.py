"""Thin, lazily imported adapters between frameworks and weightvault's numpy core.

:data:`ADAPTERS` maps the top-level module a tensor type comes from to its adapter module (with
``is_tensor_type``, ``describe``, ``tensor_to_numpy``); an adapter, and with it its framework, is
imported only when such a tensor is actually seen.
"""

from __future__ import annotations

from weightvault.core.lazy import LazyTable

__all__ = ["ADAPTERS"]

ADAPTERS = LazyTable(
    {
        "jax": "weightvault.frameworks.jax",
        "jaxlib": "weightvault.frameworks.jax",
        "tensorflow": "weightvault.frameworks.tensorflow",
        "torch": "weightvault.frameworks.torch",
    },
    what="framework",
)
