"""Viewer statistics, histograms and heat-maps of tensors holding NaN, +Inf, -Inf, or finite values
near the float64 limit, from a file torch wrote, over real HTTP.

Documented behaviour (docs/viewer.md): NaN and Inf are counted (``nan``, ``inf``), min/max/mean/std
are over the finite values (null when there is none), histograms count finite values only, and the
JSON is strict (no bare NaN/Infinity tokens: ``app.js`` reads it with ``response.json()``).
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weightvault.viewer import ViewerServer

F64_MAX = float(np.finfo(np.float64).max)


def _strict(body: bytes) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in JSON")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    mixed = rng.normal(size=(40, 30)).astype(np.float32)
    mixed[0, :5] = np.nan
    mixed[1, :3] = np.inf
    mixed[2, :4] = -np.inf
    mixed[3, 3] = 0.0
    return {
        "mixed": mixed,
        "all_nan": np.full((3, 4), np.nan, np.float32),
        "all_inf": np.array([np.inf, -np.inf, np.inf, np.inf], np.float32),
        "half": np.array([1.5, np.nan, -np.inf, np.inf, 65504.0, -0.0], np.float16),
        "huge": np.array([F64_MAX, -F64_MAX, F64_MAX, F64_MAX / 2, np.nan], np.float64),
        "huge_block": np.full((6, 6), F64_MAX, np.float64),
        "one_finite": np.array([np.nan, np.inf, 7.25], np.float32),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tensors: dict[str, np.ndarray]) -> Iterator[ViewerServer]:
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("nonfinite")
    a = root / "a.pt"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, a)
    b_tensors = dict(tensors)
    shifted = tensors["mixed"].copy()
    shifted[0, :5] = 1.0  # NaN in a, 1 in b: the difference is NaN
    shifted[1, :3] = np.inf  # Inf in both: Inf - Inf is NaN
    shifted[2, :4] = np.inf  # -Inf in a, +Inf in b: +Inf
    shifted[10:] += np.float32(0.5)
    b_tensors["mixed"] = shifted
    b = root / "b.pt"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in b_tensors.items()}, b)
    with ViewerServer([Path(a), Path(b)]).start() as srv:
        yield srv


def api(server: ViewerServer, endpoint: str, **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{server.url}api/{endpoint}?{query}", timeout=60) as resp:
        assert resp.status == 200
        return _strict(resp.read())


def _finite(arr: np.ndarray) -> np.ndarray:
    flat = arr.astype(np.float64).reshape(-1)
    return flat[np.isfinite(flat)]


def _exact_mean_std(values: np.ndarray) -> tuple[float, float]:
    exact = [Fraction(float(v)) for v in values]
    mean = sum(exact, Fraction(0)) / len(exact)
    var = sum(((x - mean) ** 2 for x in exact), Fraction(0)) / len(exact)
    k = math.frexp(float(np.abs(values).max()))[1]  # var / 4**k is a float even at the limit
    return float(mean), math.ldexp(math.sqrt(float(var / Fraction(4) ** k)), k)


@pytest.mark.parametrize("name", ["mixed", "half", "huge", "huge_block", "one_finite"])
def test_stats_count_nonfinite_and_summarise_finite_values(server: ViewerServer, tensors, name: str) -> None:
    arr = tensors[name]
    body = api(server, "tensor", file=0, name=name, bins=16)
    stats = body["stats"]
    flat = arr.astype(np.float64).reshape(-1)
    assert stats["numel"] == arr.size
    assert stats["nan"] == int(np.isnan(flat).sum())
    assert stats["inf"] == int(np.isinf(flat).sum())
    assert stats["zeros"] == int((flat == 0).sum())
    finite = _finite(arr)
    mean, std = _exact_mean_std(finite)
    assert stats["min"] == float(finite.min()) and stats["max"] == float(finite.max())
    assert stats["mean"] == pytest.approx(mean, rel=1e-12)
    assert stats["std"] == pytest.approx(std, rel=1e-9, abs=1e-12 * float(np.abs(finite).max()))
    hist = body["histogram"]
    assert hist["total"] == sum(hist["counts"]) == finite.size == arr.size - stats["nan"] - stats["inf"]
    assert all(math.isfinite(e) for e in hist["edges"])
    assert hist["edges"] == sorted(hist["edges"]) and hist["edges"][0] <= finite.min() and hist["edges"][-1] >= finite.max()
    assert hist["counts"] == np.histogram(finite, bins=np.array(hist["edges"]))[0].tolist()


def test_histogram_of_mixed_matches_numpy_bins(server: ViewerServer, tensors) -> None:
    finite = _finite(tensors["mixed"])
    hist = api(server, "tensor", file=0, name="mixed", bins=10)["histogram"]
    expected, edges = np.histogram(finite, bins=10, range=(finite.min(), finite.max()))
    assert hist["counts"] == expected.tolist()
    assert hist["edges"] == pytest.approx(edges.tolist(), rel=1e-12)


@pytest.mark.parametrize("name", ["all_nan", "all_inf"])
def test_no_finite_value_gives_nulls_and_an_empty_histogram(server: ViewerServer, tensors, name: str) -> None:
    body = api(server, "tensor", file=0, name=name)
    arr = tensors[name]
    stats = body["stats"]
    assert stats["min"] is stats["max"] is stats["mean"] is stats["std"] is None
    assert stats["nan"] + stats["inf"] == arr.size
    assert body["histogram"] == {"edges": [], "counts": [], "total": 0}
    if body["heatmap"] is not None:  # 2-D: every block null
        assert set(body["heatmap"]["values"]) == {None} and body["heatmap"]["min"] is None


def test_heatmap_blocks_leave_nonfinite_out(server: ViewerServer, tensors) -> None:
    arr = tensors["mixed"]
    hm = api(server, "tensor", file=0, name="mixed", grid=256)["heatmap"]
    assert (hm["rows"], hm["cols"]) == arr.shape and not hm["downsampled"]
    values = np.array([np.nan if v is None else v for v in hm["values"]]).reshape(arr.shape)
    finite = np.isfinite(arr)
    assert np.array_equal(np.isnan(values), ~finite)
    assert np.allclose(values[finite], arr[finite])
    huge = api(server, "tensor", file=0, name="huge_block", grid=3)["heatmap"]
    assert huge["values"] == [F64_MAX] * 9  # the block means of values at the limit do not overflow


def test_diff_tensor_counts_nan_and_inf_of_the_difference(server: ViewerServer, tensors) -> None:
    body = api(server, "diff_tensor", a=0, b=1, name="mixed", bins=8)
    stats = body["stats"]
    assert stats["nan"] == 5 + 3 + 0  # NaN - x, and Inf - Inf; one NaN slot in a is 1 in b
    assert stats["inf"] == 4  # +Inf - (-Inf)
    delta = tensors["mixed"].astype(np.float64)
    b = delta.copy()
    b[0, :5], b[1, :3], b[2, :4] = 1.0, np.inf, np.inf
    b[10:] = (tensors["mixed"][10:] + np.float32(0.5)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = (b.astype(np.float32).astype(np.float64) - delta).reshape(-1)
    finite = diff[np.isfinite(diff)]
    assert stats["max_abs"] == pytest.approx(float(np.abs(finite).max()))
    assert body["histogram"]["total"] == finite.size


def test_diff_lists_changes_without_bare_nan(server: ViewerServer) -> None:
    body = api(server, "diff", a=0, b=1)
    changed = {c["name"]: c for c in body["value_changed"]}
    assert set(changed) == {"mixed"}
    assert body["equal"] == 6  # NaN equals NaN in place, Inf equals Inf


def test_cli_stats_of_values_near_the_limit_warns_nothing(server: ViewerServer, cli_run, tmp_path: Path, tensors) -> None:
    """pytest turns warnings into errors: an overflow in a sum would fail here."""
    import weightvault

    path = weightvault.save({"huge": tensors["huge"]}, tmp_path / "huge.safetensors")
    code, out, err = cli_run("stats", path, "--json")
    assert code == 0, err
    row = json.loads(out)["tensors"][0]
    assert row["nan"] == 1 and row["inf"] == 0 and math.isfinite(row["mean"]) and math.isfinite(row["std"])
