"""Checkpoint names without wrapper decorations, and matching saved names to wanted ones.

DDP saves ``module.x``, ``torch.compile`` saves ``_orig_mod.x``: :func:`strip_wrappers` is the
one prefix stripper of restore, the torch training state, the EMA name mapping and the identity
rule sets, so they all agree on what a checkpoint name means.

>>> strip_wrappers("_orig_mod.module.fc.weight")
'fc.weight'
>>> match_names(["module.fc.weight", "fc.bias"], ["fc.weight", "fc.bias"])
{'fc.bias': 'fc.bias', 'module.fc.weight': 'fc.weight'}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_STRIP_PREFIXES", "match_names", "strip_wrappers"]

DEFAULT_STRIP_PREFIXES = ("module.", "_orig_mod.")


def strip_wrappers(
    name: str, prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES, keep: Iterable[str] = ()
) -> str:
    """``name`` without wrapper decorations: DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``.

    Stripped repeatedly (``_orig_mod.module.x`` and ``module._orig_mod.x`` both give ``x``); a
    name in ``keep`` is left as it is. The one prefix stripper of restore, ``weightvault.torch``
    and the EMA name mapping, so they all agree on what a checkpoint name means.
    """
    keep_set = set(keep)
    changed = True
    while changed and name not in keep_set:
        changed = False
        for p in prefixes:
            if p and name.startswith(p) and len(name) > len(p):
                name = name[len(p) :]
                changed = True
    return name


def match_names(
    saved: Iterable[str], wanted: Iterable[str], prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES
) -> dict[str, str]:
    """``{saved name: wanted name}``: exact names first, then equal after :func:`strip_wrappers`.

    Saved names with no counterpart are absent from the result (the caller reports them).
    """
    wanted_list = list(wanted)
    direct = set(wanted_list)
    by_stripped: dict[str, str] = {}
    for name in wanted_list:
        by_stripped.setdefault(strip_wrappers(name, prefixes), name)
    out: dict[str, str] = {}
    taken: set[str] = set()
    saved_list = list(saved)
    for name in saved_list:  # exact matches claim their names before any stripped one
        if name in direct:
            out[name] = name
            taken.add(name)
    for name in saved_list:
        if name in out:
            continue
        target = by_stripped.get(strip_wrappers(name, prefixes))
        if target is not None and target not in taken:
            out[name] = target
            taken.add(target)
    return out

