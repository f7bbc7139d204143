"""Options shared by every command that opens a weight file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["FormatOption", "open_options", "print_options", "reader_options"]

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


def print_options(
    *, precision: int | None, threshold: int | None, scope: str = ""
) -> Callable[[F], F]:
    """numpy-style print options (``--precision --linewidth --threshold --edgeitems --sci``),
    declared once for ``show`` and ``export-hw``; ``scope`` prefixes their help (``txt``)."""

    def say(text: str) -> str:
        return f"{scope}: {text[0].lower()}{text[1:]}" if scope else text

    shortest = "" if precision is not None else " (default: exact shortest)"
    options = [
        click.option(
            "--precision",
            type=int,
            default=precision,
            show_default=precision is not None,
            help=say(f"Digits after the decimal point{shortest}."),
        ),
        click.option(
            "--linewidth", type=int, default=80, show_default=True, help=say("Characters per line.")
        ),
        click.option(
            "--threshold",
            type=int,
            default=threshold,
            show_default=threshold is not None,
            help=say("Summarise above this many elements."),
        ),
        click.option(
            "--edgeitems",
            type=int,
            default=3,
            show_default=True,
            help=say("Items shown at each edge when summarised."),
        ),
        click.option("--sci/--no-sci", default=None, help=say("Force or forbid scientific notation.")),
    ]

    def apply(func: F) -> F:
        for option in reversed(options):  # the first listed is the first in --help
            func = option(func)
        return func

    return apply


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
