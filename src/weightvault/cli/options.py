"""Options shared by every command that opens a weight file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["FormatOption", "open_options", "reader_options"]

F = TypeVar("F", bound=Callable[..., Any])


class FormatOption(click.Option):
    """``--format`` / ``--to``: the help lists the names the registry accepts, computed only when
    help is shown (listing writable formats imports their modules; ``weightvault ls`` must not).
    ``writable=True`` lists only formats that can be written."""

    def __init__(self, *args: Any, writable: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = writable

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from weightvault.registry import format_choices

        choices = ", ".join(format_choices(writable=self.writable))
        saved = self.help
        self.help = f"{saved} Choices: {choices}."
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = saved


def open_options(func: F) -> F:
    """``--format`` to skip detection, ``-o KEY=VALUE`` for format options, ``--names``."""
    func = click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Format-specific read option (VALUE parsed as JSON when it can be); "
        "`weightvault formats FORMAT` lists the keys.",
    )(func)
    func = click.option(
        "--names", default=None, help="Comma-separated tensor names for formats without names (gob)."
    )(func)
    return click.option(
        "--format",
        "fmt",
        cls=FormatOption,
        default=None,
        metavar="FORMAT",
        help="Force the input format (`weightvault formats FORMAT` lists its -o options).",
    )(func)


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
