"""Options shared by every command that opens a weight file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["open_options", "reader_options"]

F = TypeVar("F", bound=Callable[..., Any])


def open_options(func: F) -> F:
    """``--format`` to skip detection, ``-o KEY=VALUE`` for format options, ``--names``."""
    func = click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Format-specific read option (VALUE parsed as JSON when it can be).",
    )(func)
    func = click.option(
        "--names", default=None, help="Comma-separated tensor names for formats without names (gob)."
    )(func)
    return click.option("--format", "fmt", default=None, help="Force the input format.")(func)


def reader_options(options: tuple[str, ...], names: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    if names:
        out["names"] = [n.strip() for n in names.split(",") if n.strip()]
    return out
