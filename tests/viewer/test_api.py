"""The viewer's JSON API over real HTTP (a server on port 0 in a thread), driven with urllib."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _viewer_files import ADDED, CHANGED, REMOVED, ViewerFiles

from weightvault.viewer import ViewerServer

# Entry indices, in the order the server is given its paths (the run adds one entry per step).
A, B, BROKEN, CONVERTED, RUN = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def server(viewer_files: ViewerFiles) -> Iterator[ViewerServer]:
    f = viewer_files
    with ViewerServer([f.a, f.b, f.broken, f.converted, f.run]).start() as srv:
        yield srv


def get(server: ViewerServer, path: str, **params: Any) -> tuple[int, Any]:
    query = urllib.parse.urlencode(params)
    url = server.url + path.lstrip("/") + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        assert exc.headers["Content-Type"].startswith("application/json"), body[:200]
        return exc.code, json.loads(body)


def raw_get(server: ViewerServer, path: str, host: str | None = None) -> tuple[int, bytes]:
    """A request with the path sent exactly as written (urllib would not normalise it, but be sure)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{server.port}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> dict[str, Any]:
    assert status == expected_status, body
    assert set(body) == {"error"}
    err = body["error"]
    assert err["status"] == expected_status
    if code is not None:
        assert err["code"] == code
    assert "Traceback" not in err["message"]
    assert "\n" not in err["message"]
    return err


# -- files, tree ------------------------------------------------------------------------------------


def test_files_lists_every_path_and_the_run_checkpoints(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    status, body = get(server, "/api/files")
    assert status == 200
    files = body["files"]
    assert [f["kind"] for f in files] == ["file", "file", "file", "file", "run", "checkpoint", "checkpoint", "checkpoint"]
    assert files[A]["path"] == os.fspath(viewer_files.a)
    assert files[RUN]["checkpoints"] == [5, 6, 7]
    assert [f["step"] for f in files[5:]] == [100, 200, 300]


def test_tree_names_shapes_and_totals(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    status, body = get(server, "/api/tree", file=A)
    assert status == 200
    assert body["format"] == "native"
    expected = viewer_files.tensors_a
    assert sorted(t["name"] for t in body["tensors"]) == sorted(expected)
    for row in body["tensors"]:
        arr = expected[row["name"]]
        assert row["shape"] == list(arr.shape)
        assert row["numel"] == arr.size
        assert row["nbytes"] == arr.nbytes
    totals = body["totals"]
    assert totals["tensors"] == len(expected)
    assert totals["params"] == sum(a.size for a in expected.values())
    assert totals["bytes"] == sum(a.nbytes for a in expected.values())
    assert totals["by_dtype"]["float16"] == expected["encoder/attn/qkv.weight"].size


def test_file_may_be_named_by_its_exact_path(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    status, body = get(server, "/api/tree", file=os.fspath(viewer_files.b))
    assert status == 200
    assert ADDED in {t["name"] for t in body["tensors"]}


# -- tensor: stats, histogram, heat-map, values -----------------------------------------------------


@pytest.mark.parametrize("name", ["encoder.layer0.weight", "encoder/attn/qkv.weight", REMOVED, "mask"])
def test_tensor_stats_equal_numpy(server: ViewerServer, viewer_files: ViewerFiles, name: str) -> None:
    status, body = get(server, "/api/tensor", file=A, name=name, bins=32)
    assert status == 200, body
    arr = viewer_files.tensors_a[name].astype(np.float64)
    s = body["stats"]
    assert s["numel"] == arr.size
    assert s["min"] == pytest.approx(arr.min())
    assert s["max"] == pytest.approx(arr.max())
    assert s["mean"] == pytest.approx(arr.mean(), rel=1e-9, abs=1e-12)
    assert s["std"] == pytest.approx(arr.std(), rel=1e-9)
    assert s["zeros"] == int((arr == 0).sum())
    assert s["nan"] == 0 and s["inf"] == 0
    hist = body["histogram"]
    assert sum(hist["counts"]) == arr.size == hist["total"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1
    assert hist["edges"][0] <= arr.min() and hist["edges"][-1] >= arr.max()


def test_histogram_counts_match_numpy(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    name = "encoder.layer0.weight"
    _, body = get(server, "/api/tensor", file=A, name=name, bins=40)
    hist = body["histogram"]
    expected, _ = np.histogram(viewer_files.tensors_a[name].astype(np.float64), bins=np.array(hist["edges"]))
    assert hist["counts"] == expected.tolist()


def test_integer_histogram_has_one_bin_per_value(server: ViewerServer) -> None:
    _, body = get(server, "/api/tensor", file=A, name=REMOVED, bins=64)
    assert body["histogram"]["counts"] == [1] * 10  # arange(10): ten unit bins, one value each


def test_heatmap_is_downsampled_block_means(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    name = "encoder.layer0.weight"  # 300 x 200
    _, body = get(server, "/api/tensor", file=A, name=name, grid=75)
    h = body["heatmap"]
    assert (h["rows"], h["cols"]) == (75, 50)  # one scale (4) for both axes: aspect kept
    assert h["downsampled"] and h["source_shape"] == [300, 200]
    arr = viewer_files.tensors_a[name].astype(np.float64)
    blocks = arr.reshape(75, 4, 50, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(np.array(h["values"]).reshape(75, 50), blocks, rtol=1e-9, atol=1e-12)
    assert h["min"] == pytest.approx(blocks.min()) and h["max"] == pytest.approx(blocks.max())


def test_heatmap_skips_non_finite_values() -> None:
    from weightvault.viewer.data import heatmap

    arr = np.arange(16, dtype=np.float32).reshape(4, 4)
    arr[0, 0] = np.nan
    arr[2:, 2:] = np.inf
    h = heatmap(arr, grid=2)
    assert h is not None and (h["rows"], h["cols"]) == (2, 2)
    assert h["values"] == [pytest.approx((1 + 4 + 5) / 3), pytest.approx((2 + 3 + 6 + 7) / 4), pytest.approx((8 + 9 + 12 + 13) / 4), None]


def test_heatmap_of_4d_tensor_uses_first_axis_by_rest(server: ViewerServer) -> None:
    _, body = get(server, "/api/tensor", file=A, name="encoder/attn/qkv.weight")
    h = body["heatmap"]
    assert h["reshaped"] and (h["rows"], h["cols"]) == (12, 36) and not h["downsampled"]
    _, bias = get(server, "/api/tensor", file=A, name=CHANGED)
    assert bias["heatmap"] is None  # 1-D: no heat-map


def test_values_use_the_chosen_precision(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    arr = viewer_files.tensors_a[CHANGED]
    status, body = get(server, "/api/values", file=A, name=CHANGED, precision=2, count=5)
    assert status == 200
    assert body["count"] == 5 and body["numel"] == 48 and not body["whole"]
    numbers = [float(x) for x in body["text"].strip("[]").split(",")]
    assert numbers == [round(float(v), 2) for v in arr[:5]]
    assert all(len(x.strip().split(".")[1]) == 2 for x in body["text"].strip("[]").split(","))
    _, body6 = get(server, "/api/values", file=A, name=CHANGED, precision=6, count=5)
    assert all(len(x.strip().split(".")[1]) == 6 for x in body6["text"].strip("[]").split(","))


def test_summaries_are_cached(server: ViewerServer) -> None:
    _, first = get(server, "/api/tensor", file=A, name="mask")
    before = len(server.data._summaries)
    _, again = get(server, "/api/tensor", file=A, name="mask")
    assert again == first and len(server.data._summaries) == before


# -- diff --------------------------------------------------------------------------------------------


def test_diff_lists_changed_added_removed(server: ViewerServer) -> None:
    status, body = get(server, "/api/diff", a=A, b=B)
    assert status == 200
    assert not body["identical"]
    assert [v["name"] for v in body["value_changed"]] == [CHANGED]
    change = body["value_changed"][0]
    assert change["max_abs"] == pytest.approx(0.25, rel=1e-6)
    assert change["changed"] == change["numel"] == 48
    assert [t["name"] for t in body["added"]] == [ADDED]
    assert [t["name"] for t in body["removed"]] == [REMOVED]
    assert body["added"][0]["shape"] == [3]
    assert body["equal"] == 3


def test_diff_with_tolerance_is_identical(server: ViewerServer) -> None:
    _, body = get(server, "/api/diff", a=A, b=B, atol=0.3)
    assert body["value_changed"] == []


def test_diff_tensor_histogram_of_differences(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    status, body = get(server, "/api/diff_tensor", a=A, b=B, name=CHANGED, bins=16)
    assert status == 200
    delta = viewer_files.tensors_b[CHANGED].astype(np.float64) - viewer_files.tensors_a[CHANGED].astype(np.float64)
    assert body["stats"]["max_abs"] == pytest.approx(np.abs(delta).max())
    assert body["stats"]["mean"] == pytest.approx(delta.mean())
    assert sum(body["histogram"]["counts"]) == 48


def test_diff_of_two_run_checkpoints(server: ViewerServer) -> None:
    _, body = get(server, "/api/diff", a=5, b=7)
    assert [v["name"] for v in body["value_changed"]] == ["w"]
    assert body["value_changed"][0]["max_abs"] == 200


# -- metadata, runs ------------------------------------------------------------------------------


def test_meta_shows_training_metadata(server: ViewerServer) -> None:
    status, body = get(server, "/api/meta", file=A)
    assert status == 200
    assert body["format"] == "native"
    assert body["training"] == {"step": 300, "epoch": 3, "metrics": {"loss": 0.125}}
    assert body["provenance"]["format_version"] == 1
    assert "transforms" not in body


def test_meta_shows_conversion_source_and_transforms(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    _, body = get(server, "/api/meta", file=CONVERTED)
    assert body["provenance"]["source"]["format"] == "numpy"
    assert body["provenance"]["source"]["path"].endswith("plain.npz")
    steps = body["transforms"]["steps"]
    assert steps == [{"target": "fc.kernel", "sources": ["dense.kernel"], "transforms": []}]


def test_runs_list_checkpoints_with_metrics(server: ViewerServer) -> None:
    status, body = get(server, "/api/runs")
    assert status == 200
    (run,) = body["runs"]
    assert [c["step"] for c in run["checkpoints"]] == [100, 200, 300]
    assert [c["metrics"]["loss"] for c in run["checkpoints"]] == [1.0, 0.5, 0.25]
    assert set(run["metric_names"]) == {"loss", "acc"}
    _, meta = get(server, "/api/meta", file=7)
    assert meta["step"] == 300 and meta["training"]["metrics"]["loss"] == 0.25


def test_a_run_entry_shows_its_latest_checkpoint(server: ViewerServer) -> None:
    _, body = get(server, "/api/tree", file=RUN)
    assert body["file"] == 7 and [t["name"] for t in body["tensors"]] == ["w"]


# -- bad input: JSON errors, no leaks ------------------------------------------------------------


def test_unreadable_file_gives_error_json(server: ViewerServer, viewer_files: ViewerFiles) -> None:
    status, body = get(server, "/api/tree", file=BROKEN)
    err = assert_error(status, body, 422, "TruncatedFileError")
    assert os.fspath(viewer_files.broken) in err["message"]
    # the other files are unaffected
    assert get(server, "/api/tree", file=A)[0] == 200


@pytest.mark.parametrize(
    "ref", ["/etc/passwd", "../../../../etc/passwd", "a.safetensors/../../../etc/passwd", "99", "-1", "1e3", "0x1", ""]
)
def test_unknown_or_outside_file_is_rejected(server: ViewerServer, ref: str) -> None:
    for endpoint in ("tree", "meta", "tensor"):
        status, body = get(server, f"/api/{endpoint}", file=ref, name="mask")
        expected = 400 if ref == "" else 404
        err = assert_error(status, body, expected)
        assert "root:" not in err["message"]


def test_outside_file_rejected_in_diff(server: ViewerServer) -> None:
    status, body = get(server, "/api/diff", a=A, b="/etc/passwd")
    assert_error(status, body, 404, "unknown_file")


def test_unknown_tensor_is_rejected(server: ViewerServer) -> None:
    for endpoint in ("tensor", "values"):
        status, body = get(server, f"/api/{endpoint}", file=A, name="no.such.tensor")
        assert_error(status, body, 404, "unknown_tensor")
    status, body = get(server, "/api/tensor", file=A)
    assert_error(status, body, 400, "missing_parameter")
    status, body = get(server, "/api/diff_tensor", a=A, b=B, name=ADDED)
    assert_error(status, body, 404, "unknown_tensor")


def test_bad_numbers_are_rejected(server: ViewerServer) -> None:
    status, body = get(server, "/api/tensor", file=A, name="mask", bins="many")
    assert_error(status, body, 400, "bad_parameter")
    status, body = get(server, "/api/diff", a=A, b=B, atol="-1")
    assert_error(status, body, 400, "bad_parameter")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2fserver.py",
        "/static/../server.py",
        "/static//etc/passwd",
        "/../../etc/passwd",
        "/server.py",
    ],
)
def test_static_path_traversal_is_refused(server: ViewerServer, path: str) -> None:
    status, body = raw_get(server, path)
    assert status == 404
    assert b"root:" not in body and b"import" not in body


def test_unknown_endpoint_and_method(server: ViewerServer) -> None:
    status, body = get(server, "/api/../../etc/passwd")
    assert status == 404
    req = urllib.request.Request(server.url + "api/files", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    with info.value as exc:
        assert exc.code == 405 and b"method_not_allowed" in exc.read()


def test_foreign_host_header_is_refused(server: ViewerServer) -> None:
    status, body = raw_get(server, "/api/files", host="attacker.example")
    assert status == 403 and b"bad_host" in body
    assert raw_get(server, "/api/files", host=f"localhost:{server.port}")[0] == 200


def test_page_and_static_files_are_served(server: ViewerServer) -> None:
    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith(kind)
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            assert resp.read()


def test_server_listens_on_loopback_by_default(server: ViewerServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_prints_url_serves_and_stops_on_ctrl_c(viewer_files: ViewerFiles) -> None:
    # SIGINT may be ignored in a background job's children; restore Python's handler first.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
        "from weightvault.cli import main; sys.argv[0] = 'weightvault'; main(sys.argv[1:])"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, "view", os.fspath(viewer_files.a), os.fspath(viewer_files.b), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line.startswith("weightvault viewer: http://127.0.0.1:"), line
            url = line.split()[2]
            with urllib.request.urlopen(url + "api/files", timeout=30) as resp:
                assert len(json.loads(resp.read())["files"]) == 2
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
            assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_rejects_missing_path(cli_run: Any, tmp_path: Any) -> None:
    start = time.perf_counter()
    code, _, err = cli_run("view", tmp_path / "missing.safetensors", "--no-browser")
    assert code == 2 and "no such file" in err
    assert time.perf_counter() - start < 10


# -- real framework files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server(fixtures_dir: Any) -> Iterator[ViewerServer]:
    paths = [
        fixtures_dir / "tensorflow" / "tf1_saver" / "model.ckpt-1000",  # a TF prefix, not a file
        fixtures_dir / "pytorch" / "train_checkpoint.pth",
        fixtures_dir / "pytorch" / "whole_module.pt",
        fixtures_dir / "keras" / "model.weights.h5",
    ]
    with ViewerServer(paths).start() as srv:
        yield srv


def test_real_tf1_checkpoint(real_server: ViewerServer, fixtures_dir: Any) -> None:
    status, tree = get(real_server, "/api/tree", file=0)
    assert status == 200 and tree["format"] == "tf_bundle"
    assert "layer1/weights" in {t["name"] for t in tree["tensors"]}
    expected = np.load(fixtures_dir / "tensorflow" / "expected" / "tf1_saver.npz")
    _, body = get(real_server, "/api/tensor", file=0, name="layer1/weights")
    arr = expected["layer1|weights"].astype(np.float64)
    assert body["stats"]["mean"] == pytest.approx(arr.mean()) and body["stats"]["max"] == pytest.approx(arr.max())
    assert body["heatmap"]["source_shape"] == [784, 128]
    _, bf16 = get(real_server, "/api/tensor", file=0, name="misc/bf16")
    assert bf16["stats"]["numel"] == 2 and sum(bf16["histogram"]["counts"]) == 2
    _, meta = get(real_server, "/api/meta", file=0)
    assert meta["training"]["global_step"] == 1000


def test_real_torch_training_checkpoint(real_server: ViewerServer) -> None:
    status, tree = get(real_server, "/api/tree", file=1)
    assert status == 200 and tree["format"] == "pytorch"
    assert "model/fc1.weight" in {t["name"] for t in tree["tensors"]}
    _, meta = get(real_server, "/api/meta", file=1)
    assert meta["training"]["epoch"] == 7 and meta["training"]["global_step"] == 1234
    assert meta["saved_scalars"]["best_acc"] == pytest.approx(0.9875)


def test_pickled_module_is_refused_with_an_error_json(real_server: ViewerServer) -> None:
    status, body = get(real_server, "/api/tree", file=2)
    err = assert_error(status, body, 422, "UnsafePickleError")
    assert "whole_module.pt" in err["message"]


def test_real_keras_weights(real_server: ViewerServer) -> None:
    status, tree = get(real_server, "/api/tree", file=3)
    assert status == 200 and tree["format"] == "keras" and tree["totals"]["tensors"] > 10
    name = next(t["name"] for t in tree["tensors"] if len(t["shape"]) == 4)
    status, body = get(real_server, "/api/tensor", file=3, name=name)
    assert status == 200 and body["heatmap"]["reshaped"]
