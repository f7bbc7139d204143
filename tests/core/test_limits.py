"""The one expansion limit and nesting bound every reader uses."""

from __future__ import annotations

import threading

import pytest

import weightvault
from weightvault.core import limits
from weightvault.errors import ResourceLimitError, WeightVaultError


def test_small_ratio_passes_whatever_the_size():
    limits.check_expansion(10 << 30, 1 << 30, path="f")  # 10x: not an expansion worth refusing


def test_large_ratio_under_the_limit_passes():
    limits.check_expansion(1 << 20, 4, path="f")  # a scalar filled into 1 MiB


def test_large_ratio_over_the_limit_is_refused_with_a_hint():
    with pytest.raises(ResourceLimitError) as err:
        limits.check_expansion(2 << 30, 4, path="g.pb", tensor="c", what="Const fill")
    assert isinstance(err.value, WeightVaultError)
    assert "g.pb" in str(err.value) and "'c'" in str(err.value) and "Const fill" in str(err.value)
    assert "WEIGHTVAULT_MAX_EXPANSION" in err.value.hint


def test_boundaries_are_inclusive():
    limit = limits.max_expanded_bytes()
    limits.check_expansion(limit, 1, path="f")
    limits.check_expansion(4 * limits.MAX_EXPANSION_RATIO, 4, path="f")
    with pytest.raises(ResourceLimitError):
        limits.check_expansion(limit + 1, 1, path="f")


def test_negative_sizes_are_refused():
    with pytest.raises(ResourceLimitError):
        limits.check_expansion(-1, 10, path="f")


def test_context_manager_raises_the_limit_for_this_thread_only():
    seen = []
    with weightvault.expansion_limit(4 << 30):
        limits.check_expansion(2 << 30, 4, path="f")
        t = threading.Thread(target=lambda: seen.append(limits.max_expanded_bytes()))
        t.start()
        t.join()
    assert seen == [1 << 30]
    with pytest.raises(ResourceLimitError):
        limits.check_expansion(2 << 30, 4, path="f")


def test_environment_variable_and_set_limits(monkeypatch):
    monkeypatch.setenv("WEIGHTVAULT_MAX_EXPANSION", "3G")
    assert limits.max_expanded_bytes() == 3 << 30
    monkeypatch.setenv("WEIGHTVAULT_MAX_EXPANSION", "512MiB")
    assert limits.max_expanded_bytes() == 512 << 20
    monkeypatch.setenv("WEIGHTVAULT_MAX_EXPANSION", "lots")
    with pytest.raises(ResourceLimitError, match="not a size"):
        limits.max_expanded_bytes()
    monkeypatch.delenv("WEIGHTVAULT_MAX_EXPANSION")
    limits.set_limits(max_expanded=5)
    try:
        assert limits.max_expanded_bytes() == 5
    finally:
        limits.set_limits(max_expanded=None)
    assert limits.max_expanded_bytes() == 1 << 30


def test_depth_bound():
    limits.check_depth(limits.MAX_NESTING, path="f")
    with pytest.raises(ResourceLimitError, match="nested"):
        limits.check_depth(limits.MAX_NESTING + 1, path="f")
