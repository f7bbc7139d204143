"""Conversion rule sets: from what a file knows to a :class:`~weightvault.transforms.Plan`.

A rule set reads names, shapes and whatever layer information the file carries (Keras group
paths and class names, a ``.keras`` config, TF variable names, an ONNX graph) and decides, per
layer, the target names and the transforms. Where the file cannot tell (which 4-D kernel is a
depthwise kernel, whether a 2-D gorgonia matrix is ``[in, out]``) the user gives a hint; an
ambiguity without a hint is an error, never a guess.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightvault.core.lazy import LazyTable
from weightvault.errors import WeightVaultError

if TYPE_CHECKING:  # the plan machinery imports numpy: only a conversion pays for it, not --help
    from weightvault.abc.format import FormatReader
    from weightvault.transforms.plan import Plan

__all__ = ["RULES", "RULE_SETS", "AmbiguousLayoutError", "Hints", "build_plan", "load_name_map", "load_rename_file"]


class AmbiguousLayoutError(WeightVaultError, ValueError):
    """The file does not say enough to choose a layout; a hint is needed."""


class Hints:
    """User hints ``PATTERN=VALUE`` (glob patterns over layer names), most specific first."""

    def __init__(self, hints: Mapping[str, str] | None = None) -> None:
        self._hints = dict(hints or {})

    def get(self, layer: str) -> str | None:
        if layer in self._hints:
            return self._hints[layer]
        for pattern, value in self._hints.items():
            if fnmatch.fnmatchcase(layer, pattern):
                return value
        return None

    def items(self) -> list[tuple[str, str]]:
        return list(self._hints.items())


RuleSet = Callable[["FormatReader", Hints, dict[str, Any]], "Plan"]

#: rule set name -> the function that plans it, imported when a conversion asks for it
RULE_SETS = LazyTable(
    {
        "gorgonia-to-torch": "weightvault.rules.identity:gorgonia_to_torch",
        "keras-to-torch": "weightvault.rules.keras_torch:keras_to_torch",
        "onnx-to-torch": "weightvault.rules.onnx_torch:onnx_to_torch",
        "oneflow-to-torch": "weightvault.rules.identity:oneflow_to_torch",
        "tf1-to-torch": "weightvault.rules.tf1_torch:tf1_to_torch",
        "torch-to-keras": "weightvault.rules.keras_torch:torch_to_keras",
    },
    what="rule set",
)

RULES = RULE_SETS.names()


def load_rename_file(path: str | Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Renames from a JSON or YAML file (``.yaml``/``.yml``): ``(exact map, regex rules)``.

    The one rename-file loader (``restore(rename=...)``, ``restore-report --rename``,
    ``convert(name_map=...)``, ``convert --map``). Accepted shapes:

    * an object ``{"old": "new", ...}``: exact names;
    * a list of ``[regex, replacement]`` pairs, applied in order;
    * ``{"map": {...}, "rules": [[regex, replacement], ...]}``: both.

    >>> import json
    >>> path = tmp_path / "renames.json"  # tmp_path: a fresh directory (tests/test_doctests.py)
    >>> _ = path.write_text(json.dumps({"map": {"fc.w": "fc.weight"}, "rules": [["^enc", "encoder"]]}))
    >>> load_rename_file(path)
    ({'fc.w': 'fc.weight'}, [('^enc', 'encoder')])
    """
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith((".yaml", ".yml")):
        import yaml  # optional dependency, only for YAML files

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightVaultError(f"rename file is not valid JSON: {exc}", path=path) from exc
    exact: dict[str, str] = {}
    rules: list[tuple[str, str]] = []
    if isinstance(data, dict) and set(data) <= {"map", "rules"} and data:
        exact = dict(data.get("map") or {})
        rules = [tuple(p) for p in data.get("rules") or []]  # type: ignore[misc]
    elif isinstance(data, dict):
        exact = dict(data)
    elif isinstance(data, list):
        rules = [tuple(p) for p in data]  # type: ignore[misc]
    else:
        raise WeightVaultError(
            "a rename file holds an object of names or a list of [regex, replacement]", path=path
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in exact.items()):
        raise WeightVaultError("a rename map must be an object of string to string", path=path)
    if not all(len(r) == 2 and all(isinstance(x, str) for x in r) for r in rules):
        raise WeightVaultError("rename rules must be [regex, replacement] string pairs", path=path)
    return exact, rules



def load_name_map(path: str | Path) -> dict[str, str]:
    """A ``{source_or_target_name: new_name}`` map: :func:`load_rename_file`'s exact part.

    A file that also holds regex rules is refused here (``convert`` takes them as ``rename=``).
    """
    exact, rules = load_rename_file(path)
    if rules:
        raise WeightVaultError(
            "a name map must be an object of string to string, not regex rules",
            path=path,
            hint="pass regex rules as rename= (--rename REGEX=REPL)",
        )
    return exact


def _rename(plan: Plan, renames: list[tuple[str, str]], name_map: Mapping[str, str]) -> Plan:
    from weightvault.transforms.plan import Plan, Step

    steps = []
    for step in plan.steps:
        target = name_map.get(step.target, step.target)
        for pattern, repl in renames:
            target = re.sub(pattern, repl, target)
        steps.append(Step(target, step.sources, step.transforms, step.combine, step.note))
    return Plan(plan.rules, steps, plan.dropped, plan.notes)


def build_plan(
    reader: FormatReader,
    rules: str | None,
    *,
    hints: Mapping[str, str] | None = None,
    rename: list[tuple[str, str]] | None = None,
    name_map: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Plan:
    """The plan that converts ``reader``'s tensors under rule set ``rules`` (None: names only)."""
    from weightvault.transforms.plan import Plan, Step

    if rules is None:
        plan = Plan("rename", [Step(n, (n,)) for n in reader.keys()])
    else:
        if rules not in RULE_SETS:
            raise WeightVaultError(RULE_SETS.unknown_message(rules))
        plan = RULE_SETS[rules](reader, Hints(hints), dict(options or {}))
    plan = _rename(plan, list(rename or []), dict(name_map or {}))
    try:
        plan.check_targets_unique()
    except ValueError as exc:
        raise WeightVaultError(str(exc), path=reader.path, hint="use --rename or --map to give them distinct names") from None
    return plan
