"""The helpers that replaced copies (#15.5) keep what each caller relied on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weightvault.errors import InvalidHeaderError, WeightVaultError


def test_one_varint_decoder_for_protobuf_and_sstable() -> None:
    from weightvault.core import sstable
    from weightvault.core.protobuf import ProtobufDecodeError, decode_varint, encode_varint

    for value in (0, 1, 127, 128, 300, 2**63 - 1, 2**64 - 1):
        assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))
    eleven = bytes([0x80] * 10 + [0x01])
    with pytest.raises(ProtobufDecodeError, match="protobuf varint longer than 10 bytes"):
        decode_varint(eleven, 0)
    with pytest.raises(InvalidHeaderError, match="table index block: varint longer") as err:
        sstable._varint(eleven, 0, len(eleven), "x.index", "index block")
    assert not isinstance(err.value, ProtobufDecodeError)
    with pytest.raises(InvalidHeaderError, match="table footer: varint runs past the end"):
        sstable._varint(b"\x80\x80", 0, 2, "x.index", "footer")


def test_jsonable_callers_keep_their_policies() -> None:
    from weightvault.cli.state import _jsonable as listing
    from weightvault.formats._common import jsonable as metadata
    from weightvault.formats.gob import GoInterface, _jsonable as gob

    assert metadata({1: (np.int64(3), b"\xff")}) == {"1": [3, "ff"]}
    assert gob([1 + 2j, b"ok", GoInterface("T", 7, (1, 2))]) == [
        [1.0, 2.0],
        "6f6b",
        {"type": "T", "value": [1, 2]},
    ]
    # The state listing prints numpy scalars and other objects as their str, bytes as text.
    assert listing({"lr": np.float32(0.5), "tag": b"a\xff", "f": 1.5}) == {
        "lr": "0.5",
        "tag": "a\\xff",
        "f": 1.5,
    }


def test_one_rename_loader_and_its_shapes(tmp_path: Path) -> None:
    from weightvault.rules import load_name_map, load_rename_file

    def write(data: object) -> Path:
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(data))
        return path

    assert load_rename_file(write({"a": "b"})) == ({"a": "b"}, [])
    assert load_rename_file(write([["^x", "y"]])) == ({}, [("^x", "y")])
    both = write({"map": {"a": "b"}, "rules": [["^x", "y"]]})
    assert load_rename_file(both) == ({"a": "b"}, [("^x", "y")])
    assert load_name_map(write({"a": "b"})) == {"a": "b"}
    with pytest.raises(WeightVaultError, match="not regex rules"):
        load_name_map(both)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(WeightVaultError, match="not valid JSON"):
        load_name_map(bad)  # was a bare json.JSONDecodeError before the loaders were one


def test_identity_rules_strip_with_the_shared_stripper() -> None:
    from weightvault.core.names import strip_wrappers

    assert strip_wrappers("_orig_mod.module.model.x", ("module.", "_orig_mod.", "model.")) == "x"
    assert strip_wrappers("module.", ("module.",)) == "module."  # never stripped to nothing
