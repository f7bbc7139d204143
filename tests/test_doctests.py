"""The examples in the public API's docstrings run, and every public name has one.

Each docstring's examples run with these names already there (besides what they import):
``tmp_path``, a fresh directory (examples write only under it, and run with it as the current
directory); ``np``; ``weightvault``; and ``reader``, ``weightvault.open`` of a small safetensors
file saved from ``{"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2,
np.float32)}`` (the :class:`~weightvault.abc.format.FormatReader` method examples use it).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
from pathlib import Path

import numpy as np
import pytest

import weightvault

# The modules of every name in weightvault.__all__ (and weightvault.open / weightvault.torch),
# plus the shared helpers whose docstrings show how they are used.
MODULES = [
    "weightvault",
    "weightvault.abc.format",
    "weightvault.api",
    "weightvault.checkpoint",
    "weightvault.checkpoint.ema",
    "weightvault.checkpoint.manager",
    "weightvault.checkpoint.restore",
    "weightvault.checkpoint.watch",
    "weightvault.core.io",
    "weightvault.core.jsonable",
    "weightvault.core.limits",
    "weightvault.core.names",
    "weightvault.core.protobuf",
    "weightvault.errors",
    "weightvault.export.api",
    "weightvault.rules",
    "weightvault.torch",
]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in MODULES:
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def _sample_reader(tmp_path: Path) -> weightvault.CheckpointReader:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    return weightvault.open(weightvault.save(state, tmp_path / "sample.safetensors"))


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test: doctest.DocTest, tmp_path: Path) -> None:
    if any("import torch" in ex.source for ex in test.examples):
        pytest.importorskip("torch")  # an optional framework: its examples need it installed
    work = tmp_path / "work"
    work.mkdir()
    reader = _sample_reader(tmp_path)
    test.globs.update(tmp_path=work, np=np, weightvault=weightvault, reader=reader)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures: list[str] = []
    cwd = os.getcwd()
    os.chdir(work)
    try:
        runner.run(test, out=lambda text: failures.append(text))
    finally:
        os.chdir(cwd)
        reader.close()
        test.globs.clear()
    assert not failures, "".join(failures)


def _public_api() -> dict[str, object]:
    from weightvault.abc.format import FormatReader

    api = {name: getattr(weightvault, name) for name in weightvault.__all__ if name != "__version__"}
    api["open"] = weightvault.open
    for name, member in vars(FormatReader).items():
        if not name.startswith("_") and (callable(member) or isinstance(member, property)):
            api[f"FormatReader.{name}"] = getattr(FormatReader, name)
    return api


def test_every_public_name_has_a_checked_example() -> None:
    checked = {t.name for t in DOCTESTS}
    lacking = []
    for name, obj in _public_api().items():
        target = obj.fget if isinstance(obj, property) else obj
        module = getattr(target, "__module__", None) or ""
        qualname = getattr(target, "__qualname__", name)
        if f"{module}.{qualname}" not in checked:
            lacking.append(name)
    assert not lacking, f"no example (or not in MODULES) for: {', '.join(sorted(lacking))}"


def test_the_examples_are_many() -> None:
    assert sum(len(t.examples) for t in DOCTESTS) >= 100
