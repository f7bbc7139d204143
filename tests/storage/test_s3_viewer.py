"""``weightvault view URL``: the viewer over files and training runs on a real S3 server (moto).

The viewer opens a URL like a local path: a single object, a checkpoint prefix, or a run prefix
(one entry per committed step); tensors come by ranged reads, and an ONNX graph is fetched once
into a temporary file and drawn with the URL as its name."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from weightvault.checkpoint import CheckpointManager
from weightvault.cli import cli
from weightvault.errors import WeightVaultError
from weightvault.viewer.data import ViewerData


@pytest.fixture
def env_options(s3, monkeypatch):
    """The server's options as the process defaults, as ``--storage-option`` sets them."""
    import json

    bucket, options, _client = s3
    monkeypatch.setenv("WEIGHTVAULT_STORAGE_OPTIONS", json.dumps(options))
    return bucket, options


def _onnx_file(root: Path) -> Path:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    path = root / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy (TorchScript) exporter is deprecated
        torch.onnx.export(net, (torch.randn(1, 4),), os.fspath(path), dynamo=False)
    return path


def test_view_a_run_on_s3_lists_its_steps_and_reads_their_tensors(env_options):
    bucket, options = env_options
    run = f"{bucket}/runs/exp"
    rng = np.random.default_rng(0)
    states = {}
    with CheckpointManager(run, max_to_keep=2, storage_options=options) as mgr:
        for step in (1, 2, 3):
            states[step] = {"w": rng.standard_normal((8, 5)).astype(np.float32)}
            mgr.save(step, states[step], metrics={"loss": 1.0 / step})
    data = ViewerData([run])
    try:
        files = data.files()["files"]
        assert [f["kind"] for f in files] == ["run", "checkpoint", "checkpoint"]  # step 1 retired
        assert files[1]["path"] == f"{run}/step-00000002"
        assert [c["step"] for c in data.run(data.entries[0])["checkpoints"]] == [2, 3]
        summary = data.tensor("2", "w")
        assert summary["stats"]["max"] == pytest.approx(float(states[3]["w"].max()))
        values = data.values("1", "w", count=40, precision=8)
        assert values["whole"] is True and f"{states[2]['w'][0, 0]:.8f}" in values["text"]
        diff = data.diff("1", "2")
        assert [t["name"] for t in diff["value_changed"]] == ["w"]
    finally:
        data.close()


def test_view_an_onnx_object_draws_its_graph_named_by_the_url(s3, env_options, tmp_path):
    bucket, _options = env_options
    local = _onnx_file(tmp_path)
    url = f"{bucket}/models/mlp.onnx"
    s3[2].put_object(Bucket=bucket.removeprefix("s3://"), Key="models/mlp.onnx", Body=local.read_bytes())
    data = ViewerData([url])
    try:
        graph = data.graph("0")
        assert graph["available"] is True
        ops = sorted(n["op"] for n in graph["nodes"])
        assert ops.count("Gemm") == 2 and "Relu" in ops
        # the weights of the first Gemm are attached to it
        weighted = [n for n in graph["nodes"] if n["op"] == "Gemm" and n.get("weights")]
        assert len(weighted) == 2
        assert data.tree("0")["format"] == "onnx"
        copy = Path(data.entries[0].reader.path)  # the private local copy the graph came from
        assert copy.is_file()
    finally:
        data.close()
    assert not copy.exists()


def test_a_broken_remote_graph_is_reported_under_its_url(s3, env_options, tmp_path):
    bucket, _options = env_options
    whole = _onnx_file(tmp_path).read_bytes()
    # the initializers stay readable (the tree opens), the graph's node list is cut short
    s3[2].put_object(Bucket=bucket.removeprefix("s3://"), Key="cut.onnx", Body=whole[: len(whole) - 40])
    url = f"{bucket}/cut.onnx"
    data = ViewerData([url])
    try:
        with pytest.raises(WeightVaultError) as caught:
            data.graph("0")
    finally:
        data.close()
    assert caught.value.path == url and url in str(caught.value)
    assert "weightvault-graph-" not in str(caught.value)


def test_view_refuses_a_missing_url_by_name(env_options):
    bucket, _ = env_options
    result = CliRunner().invoke(cli, ["view", "--no-browser", f"{bucket}/nothing/here.safetensors"])
    assert result.exit_code != 0
    assert f"{bucket}/nothing/here.safetensors: no such file or directory" in result.output


def test_view_accepts_existing_urls_before_starting(env_options):
    from weightvault.cli.view import _exists

    bucket, options = env_options
    with CheckpointManager(f"{bucket}/r", storage_options=options) as mgr:
        mgr.save(1, {"w": np.ones(3, np.float32)})
    assert _exists(f"{bucket}/r") and _exists(f"{bucket}/r/step-00000001")
    assert _exists(f"{bucket}/r/step-00000001/manifest.json")
    assert not _exists(f"{bucket}/r/step-00000002")


def test_view_a_pt2_object_draws_its_graph_with_weights(s3, env_options, tmp_path):
    import torch

    bucket, _options = env_options
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    local = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), local)
    s3[2].put_object(Bucket=bucket.removeprefix("s3://"), Key="m.pt2", Body=local.read_bytes())
    data = ViewerData([f"{bucket}/m.pt2"])
    try:
        graph = data.graph("0")
        assert graph["format"] == "torch_export" and graph["available"] is True
        linear = [n for n in graph["nodes"] if "linear" in n["op"]]
        assert len(linear) == 1 and sorted(linear[0]["weights"]) == ["0.bias", "0.weight"]
    finally:
        data.close()
