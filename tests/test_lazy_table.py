"""``weightvault.core.lazy.LazyTable`` and the tables built on it (issue 15, item 4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from weightvault.core.lazy import LazyTable, UnknownNameError


def test_names_are_listed_without_importing() -> None:
    table = LazyTable({"b": "json:dumps", "a": "weightvault.no_such_module:x"}, what="thing")
    assert list(table) == ["b", "a"] and len(table) == 2 and "a" in table and "c" not in table
    assert table.names() == ("b", "a")
    assert table.target("a") == "weightvault.no_such_module:x"
    assert not table.is_loaded("b")


def test_an_entry_is_imported_on_first_use_and_kept() -> None:
    import json

    table = LazyTable({"dumps": "json:dumps", "mod": "json", "nested": "json:JSONDecoder.decode"})
    assert table["dumps"] is json.dumps and table.is_loaded("dumps")
    assert table["mod"] is json
    assert table["nested"] is json.JSONDecoder.decode
    assert table.get("dumps") is json.dumps


def test_unknown_name_lists_the_valid_ones() -> None:
    table = LazyTable({"zeta": "json:dumps", "alpha": "json:loads"}, what="rule set")
    with pytest.raises(UnknownNameError) as err:
        table["beta"]
    assert str(err.value) == "unknown rule set 'beta'; known: alpha, zeta"
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownNameError, match="known: alpha, zeta"):
        table.target("beta")
    assert table.get("beta") is None  # Mapping.get still answers None


def test_a_broken_target_fails_when_used_not_when_listed() -> None:
    table = LazyTable({"x": "weightvault.no_such_module:x"})
    assert "x" in table
    with pytest.raises(ModuleNotFoundError):
        table["x"]


def test_rule_sets_are_a_lazy_table() -> None:
    from weightvault.errors import WeightVaultError
    from weightvault.rules import RULE_SETS, RULES, build_plan

    assert RULES == RULE_SETS.names() and "keras-to-torch" in RULES
    with pytest.raises(WeightVaultError, match="unknown rule set 'nope'; known: gorgonia-to-torch, "):
        build_plan(None, "nope")  # type: ignore[arg-type]


def _imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nprint(sorted(m for m in sys.modules))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return set(eval(out.strip().splitlines()[-1]))  # noqa: S307 - our own print of a list of str


def test_cli_help_imports_no_numpy_and_no_rule_set() -> None:
    mods = _imported_by(
        "import sys\nfrom weightvault.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['convert', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert "numpy" not in mods
    assert not {m for m in mods if m.startswith(("weightvault.rules.", "weightvault.transforms"))}
    assert "weightvault.cli.convert" in mods  # the command itself was loaded to list --rules


def test_cli_commands_are_a_lazy_table() -> None:
    from weightvault.cli import COMMANDS, cli

    assert isinstance(COMMANDS, LazyTable) and list(COMMANDS) == sorted(COMMANDS)
    assert cli.get_command(None, "nope") is None  # type: ignore[arg-type]
    assert cli.get_command(None, "ls").name == "ls"  # type: ignore[arg-type, union-attr]


def test_export_file_kinds_are_lazy_tables() -> None:
    from weightvault.export.api import FILE_FORMATS
    from weightvault.export.files import WORD_READERS, WRITERS

    assert set(WRITERS) == set(FILE_FORMATS)  # every kind export_hw accepts has a writer
    assert set(WORD_READERS) == set(WRITERS) - {"txt"}  # txt holds values, read apart
    for kind in WRITERS:
        assert callable(WRITERS[kind]), kind
    for kind in WORD_READERS:
        assert callable(WORD_READERS[kind]), kind
    with pytest.raises(UnknownNameError, match="unknown export file format 'vhd'; known: c, coe, hex"):
        WRITERS["vhd"]


def test_framework_adapters_are_a_lazy_table() -> None:
    mods = _imported_by(
        "import sys\nfrom weightvault.frameworks import ADAPTERS\nassert 'torch' in ADAPTERS"
    )
    assert "torch" not in mods and "weightvault.frameworks.torch" not in mods
    from weightvault.core.tensors import is_tensor
    from weightvault.frameworks import ADAPTERS

    torch = pytest.importorskip("torch")
    assert is_tensor(torch.zeros(2)) and ADAPTERS.is_loaded("torch")
    assert not is_tensor(object())
