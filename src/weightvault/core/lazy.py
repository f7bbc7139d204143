"""``LazyTable``: a name -> ``"module:attr"`` table whose entries are imported on first use.

The CLI's commands, the conversion rule sets, the framework adapters and the hardware-export file
formats are all looked up by a name the user typed. Listing the names must not import what they
name (``weightvault --help`` would pay for numpy, a rule set for its transforms), so each table
holds dotted paths and imports one only when it is asked for. An unknown name is an error that
lists the valid ones. Imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["LazyTable", "UnknownNameError"]


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a :class:`LazyTable`; the message lists the valid names.

    A ``KeyError`` (it is a failed lookup) and a ``ValueError`` (a wrong argument), so callers
    that catch either keep working; ``str()`` is the message, not KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LazyTable(Mapping[str, Any]):
    """A read-only mapping ``name -> object`` whose objects are imported on first access.

    ``targets`` maps each name to ``"package.module:attr"`` (``attr`` may be dotted) or to
    ``"package.module"`` for the module itself. Iteration, ``len`` and ``in`` never import.
    ``what`` names the entries in errors ("rule set", "command").
    """

    def __init__(self, targets: Mapping[str, str], *, what: str = "name") -> None:
        self._targets = dict(targets)
        self._loaded: dict[str, Any] = {}
        self.what = what

    # -- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        target = self._targets.get(name)
        if target is None:
            raise UnknownNameError(self.unknown_message(name))
        module_name, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        self._loaded[name] = obj
        return obj

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    # -- the table as data -----------------------------------------------------------------------
    def names(self) -> tuple[str, ...]:
        """The names, in the table's order, without importing anything."""
        return tuple(self._targets)

    def target(self, name: str) -> str:
        """The ``"module:attr"`` a name stands for, without importing it."""
        if name not in self._targets:
            raise UnknownNameError(self.unknown_message(name))
        return self._targets[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def unknown_message(self, name: object) -> str:
        return f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._targets)) or 'none'}"

    def __repr__(self) -> str:
        return f"LazyTable({self.what}: {', '.join(self._targets)})"
