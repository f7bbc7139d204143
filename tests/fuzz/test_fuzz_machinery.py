"""The fuzzer's own parts: deterministic mutants, honest classification, hangs detected."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from wvfuzz import mutators
from wvfuzz.runner import Mutant, Worker, materialise, random_mutant
from wvfuzz.seeds import Seed
from wvfuzz.worker import _classify

import weightvault
from weightvault.abc.guard import translate
from weightvault.errors import InvalidHeaderError


@pytest.fixture
def seed_file(tmp_path: Path) -> Seed:
    path = weightvault.save({"w": np.arange(12, dtype=np.float32)}, tmp_path / "s.safetensors")
    return Seed("native", "s.safetensors", Path(path))


def test_mutants_are_replayable(seed_file: Seed, tmp_path: Path) -> None:
    mutant = random_mutant(seed_file, random.Random(3))
    a = materialise(mutant, tmp_path / "a").read_bytes()
    b = materialise(Mutant(seed_file, list(mutant.ops)), tmp_path / "b").read_bytes()
    assert a == b and a != seed_file.path.read_bytes()


@pytest.mark.parametrize("name", sorted(mutators.MUTATORS))
def test_every_mutator_changes_a_real_file(name: str, seed_file: Seed) -> None:
    data = seed_file.path.read_bytes()
    changed = {mutators.mutate(seed_file.path.name, data, name, s) != data for s in range(8)}
    assert True in changed


def test_structure_aware_header_mutation_keeps_the_length_prefix_consistent(seed_file: Seed) -> None:
    data = seed_file.path.read_bytes()
    consistent = 0
    for s in range(20):
        out = mutators.safetensors_header(data, random.Random(s))
        n = int.from_bytes(out[:8], "little")
        consistent += out[8 + n - 1 : 8 + n] in (b"}", b" ") and n <= len(out)
    assert consistent >= 15


def test_classification() -> None:
    def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
        try:
            raise exc from cause
        except BaseException as caught:  # noqa: BLE001 - the classification is under test
            return caught

    assert _classify(raised(InvalidHeaderError("bad", path="f")))["outcome"] == "clean"
    assert _classify(raised(KeyError("x")))["outcome"] == "foreign"
    assert _classify(raised(MemoryError()))["outcome"] == "memory"
    wrapped = raised(translate(KeyError("x"), path="f", tensor="t"), KeyError("x"))
    assert _classify(wrapped)["outcome"] == "wrapped"
    oom = raised(translate(MemoryError(), path="f", tensor="t"), MemoryError())
    assert _classify(oom)["outcome"] == "memory"


def test_a_reader_that_blocks_is_reported_as_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: never, here
    worker = Worker(timeout=3.0)
    try:
        assert worker.run(fifo).outcome == "hang"
        # The worker was replaced and still answers.
        good = weightvault.save({"w": np.ones(3, np.float32)}, tmp_path / "good.safetensors")
        assert worker.run(Path(good)).outcome == "ok"
    finally:
        worker.kill()
