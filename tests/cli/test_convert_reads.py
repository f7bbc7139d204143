"""``convert --rules`` reads each source tensor once; ``--dry-run`` reads no tensor data.

Counted on a wrapper around the real reader of a real file (a torch-written ``.pt``, a
Keras-written ``.h5``): every ``get``, ``get_slice`` and byte span handed to a writer (which then
streams those bytes) is a read. The plan's ``info`` comes from the transforms' ``resolve_info``,
so neither the writers' headers nor the report need the data.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

torch = pytest.importorskip("torch")

import weightvault  # noqa: E402
import weightvault.api  # noqa: E402
from weightvault.abc.format import ByteSpan, FormatReader, TensorInfo  # noqa: E402


class CountingReader(FormatReader):
    """The real reader, counting every read of tensor data by name."""

    def __init__(self, inner: FormatReader) -> None:
        super().__init__(inner.path)
        self.inner = inner
        self.reads: Counter[str] = Counter()

    @property
    def format(self) -> str:
        return self.inner.format

    @property
    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata

    @property
    def skipped(self) -> dict[str, str]:
        return self.inner.skipped

    def keys(self) -> list[str]:
        return self.inner.keys()

    def info(self, name: str) -> TensorInfo:
        return self.inner.info(name)

    def get(self, name: str) -> np.ndarray:
        self.reads[name] += 1
        return self.inner.get(name)

    def get_slice(self, name: str, index: Any) -> np.ndarray:
        self.reads[name] += 1
        return self.inner.get_slice(name, index)

    def byte_span(self, name: str) -> ByteSpan | None:
        span = self.inner.byte_span(name)
        if span is not None:  # the writer streams these bytes: one read
            self.reads[name] += 1
        return span

    def structure(self) -> Any:
        return self.inner.structure()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[CountingReader]:
    """Every reader ``convert`` opens, wrapped; the list fills as files are opened."""
    opened: list[CountingReader] = []
    real_open = weightvault.api.open

    def open_counted(*args: Any, **kwargs: Any) -> CountingReader:
        reader = CountingReader(real_open(*args, **kwargs))
        opened.append(reader)
        return reader

    monkeypatch.setattr(weightvault.api, "open", open_counted)
    return opened


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.embedding = nn.Embedding(11, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.dense = nn.Linear(5, 3)


@pytest.fixture
def torch_file(tmp_path: Path) -> Path:
    net = TorchNet()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    src = tmp_path / "net.pt"
    torch.save(net.state_dict(), src)
    return src


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    layers = keras.layers
    tok = keras.Input((5,), dtype="int32")
    t = layers.Embedding(11, 4, name="emb")(tok)
    t = layers.LSTM(6, return_sequences=True, name="lstm")(t)
    t = layers.GRU(5, name="gru")(t)
    out = layers.Dense(3, name="fc")(layers.LayerNormalization(name="ln")(t))
    model = keras.Model(tok, out)
    src = tmp_path_factory.mktemp("keras") / "m.h5"
    model.save(src)  # legacy HDF5, written by Keras itself
    return src


def _uses(reader: FormatReader, rules: str, hints: dict[str, str]) -> Counter[str]:
    """How many target tensors each source feeds (a Keras GRU bias gives two PyTorch biases)."""
    from weightvault.rules import build_plan

    plan = build_plan(reader, rules, hints=hints)
    return Counter(s for step in plan.steps for s in step.sources)


def _targets(src: Path, rules: str, hints: dict[str, str]) -> list[str]:
    from weightvault.rules import build_plan

    with weightvault.open(src) as plain:
        return [step.target for step in build_plan(plain, rules, hints=hints).steps]


CASES = {
    "pt torch-to-keras": ("torch_file", "torch-to-keras", {"embedding": "embedding"}, "out.safetensors"),
    "h5 keras-to-torch": ("keras_file", "keras-to-torch", {}, "out.pt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rules_read_each_source_once(
    request: pytest.FixtureRequest, cli_run, counted: list[CountingReader], tmp_path: Path, case: str
) -> None:
    fixture, rules, hints, out_name = CASES[case]
    src = request.getfixturevalue(fixture)
    with weightvault.open(src) as plain:
        used = _uses(plain, rules, hints)
    counted.clear()
    dst = tmp_path / out_name
    hint_args = [a for k, v in hints.items() for a in ("--hint", f"{k}={v}")]
    code, out, _ = cli_run("convert", src, dst, "--rules", rules, *hint_args)
    assert code == 0, out
    (reader,) = [r for r in counted if r.path == os.fspath(src)]
    assert len(used) > 5
    assert reader.reads == used  # once per target it feeds; nothing the plan drops
    with weightvault.open(dst) as written:  # and every target was written
        assert len(written.keys()) == sum(1 for _ in _targets(src, rules, hints))


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_reads_no_tensor_data(
    request: pytest.FixtureRequest, cli_run, counted: list[CountingReader], tmp_path: Path, case: str
) -> None:
    fixture, rules, hints, out_name = CASES[case]
    src = request.getfixturevalue(fixture)
    dst = tmp_path / out_name
    hint_args = [a for k, v in hints.items() for a in ("--hint", f"{k}={v}")]
    code, out, _ = cli_run("convert", src, dst, "--rules", rules, *hint_args, "--dry-run", "--json")
    assert code == 0, out
    (reader,) = [r for r in counted if r.path == os.fspath(src)]
    assert reader.reads == Counter()
    assert not dst.exists()
    import json

    rows = json.loads(out)["tensors"]
    assert rows and all(r["target_shape"] is not None for r in rows)
    # shapes in the report are those of the tensors a real conversion writes
    code, _, _ = cli_run("convert", src, dst, "--rules", rules, *hint_args)
    assert code == 0
    with weightvault.open(dst) as written:
        for r in rows:
            assert list(written.info(r["target"]).shape) == r["target_shape"], r["target"]
