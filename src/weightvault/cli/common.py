"""Output helpers shared by every command: data to stdout, messages to stderr, ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = ["console", "emit_json", "human_bytes", "json_option", "print_table", "warn"]

F = TypeVar("F", bound=Callable[..., Any])
JSON_VERSION = "1"


def json_option(func: F) -> F:
    """The ``--json`` flag every command that prints a table takes."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(func)


def console(width: int | None = None) -> Any:
    """A rich console on stdout: the terminal's width on a terminal, ``width`` (default 400) when
    piped, so output for scripts and files is never squeezed to a guessed width."""
    from rich.console import Console

    # markup=False: tensor names like "a[0]" must print as they are, not as rich markup.
    width = None if sys.stdout.isatty() else width or 400
    return Console(soft_wrap=False, highlight=False, markup=False, width=width)


def _default(obj: Any) -> Any:
    import numpy as np  # only when printing JSON: `--help` and plain tables need no numpy

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def emit_json(data: dict[str, Any]) -> None:
    """Print one JSON document (with a schema version) to stdout."""
    payload = {"version": JSON_VERSION, **data}
    click.echo(json.dumps(payload, default=_default, ensure_ascii=False, indent=1, allow_nan=True))


_GAP = 2  # spaces between columns (rich: padding 1 on each side, none at the edges)
_MIN_FOLD = 12  # a folded name column narrower than this is harder to read than the record layout


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    footer: str | None = None,
    justify: dict[str, str] | None = None,
    fold: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> None:
    """Print a table that never hides data: no number is cut and no column is dropped.

    Columns named in ``fold`` (tensor names) may break anywhere, those in ``wrap`` (free text
    holding numbers: metrics, details) only at spaces; every other column keeps its full width.
    When even that does not fit the terminal, each row prints as a record instead: its first
    ``fold`` cell on a line of its own, then ``header value`` pairs wrapped to the width.
    """
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    natural = _natural_widths(columns, cells)
    width = _terminal_width()
    if width is None or sum(natural) + _GAP * (len(columns) - 1) <= width:
        _print_rich(columns, cells, natural, set(), title, footer, justify, width)
        return
    widths = _fit_widths(columns, cells, natural, width, fold, wrap)
    if widths is None:
        _print_records(columns, cells, width, fold, wrap, title, footer)
        return
    flexible = {i for i, c in enumerate(columns) if c in fold or c in wrap}
    _print_rich(columns, cells, widths, flexible, title, footer, justify, width)


def _terminal_width() -> int | None:
    return int(console().width) if sys.stdout.isatty() else None


def _natural_widths(columns: Sequence[str], cells: list[list[str]]) -> list[int]:
    from rich.cells import cell_len

    return [max([cell_len(h)] + [cell_len(row[i]) for row in cells]) for i, h in enumerate(columns)]


def _longest_word(texts: list[str]) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for t in texts for w in t.split()), default=0)


def _fit_widths(
    columns: Sequence[str],
    cells: list[list[str]],
    natural: list[int],
    width: int,
    fold: Sequence[str],
    wrap: Sequence[str],
) -> list[int] | None:
    """Widths that fit ``width`` by narrowing only fold/wrap columns; None when impossible."""
    flexible = [i for i, c in enumerate(columns) if c in fold or c in wrap]
    budget = width - _GAP * (len(columns) - 1) - sum(w for i, w in enumerate(natural) if i not in flexible)
    minimum = {}
    for i in flexible:
        texts = [columns[i]] + [row[i] for row in cells]
        floor = min(natural[i], _MIN_FOLD)
        # wrap columns break only between words; no header word is ever broken either
        words = _longest_word(texts) if columns[i] in wrap else _longest_word([columns[i]])
        minimum[i] = max(floor, words)
    if not flexible or sum(minimum.values()) > budget:
        return None
    widths = list(natural)
    spare = budget - sum(minimum.values())
    want = {i: natural[i] - minimum[i] for i in flexible}
    total_want = sum(want.values()) or 1
    for i in flexible:
        widths[i] = minimum[i] + (spare * want[i]) // total_want
    return widths


def _print_rich(
    columns: Sequence[str],
    cells: list[list[str]],
    widths: list[int],
    flexible: set[int],
    title: str | None,
    footer: str | None,
    justify: dict[str, str] | None,
    terminal: int | None,
) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False, box=None, pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(
            col,
            justify=(justify or {}).get(col, "left"),  # type: ignore[arg-type]
            no_wrap=i not in flexible,
            overflow="fold",
            width=widths[i],
        )
    for row in cells:
        table.add_row(*row)
    total = sum(widths) + _GAP * (len(columns) - 1)
    out = console(None if terminal else max(total, 80))
    out.print(table)
    if footer:
        out.print(footer, soft_wrap=True)


def _fold_text(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def _flow(items: list[str], width: int) -> list[str]:
    """Items placed greedily on lines of ``width``; a longer item breaks at spaces, then folds."""
    lines: list[str] = []
    line = ""
    pieces: list[str] = []
    for item in items:
        pieces += [item] if len(item) <= width else _flow(item.split(" "), width) if " " in item else _fold_text(item, width)
    for piece in pieces:
        if line and len(line) + _GAP + len(piece) > width:
            lines.append(line)
            line = ""
        line = f"{line}{' ' * _GAP}{piece}" if line else piece
    if line:
        lines.append(line)
    return lines


def _print_records(
    columns: Sequence[str],
    cells: list[list[str]],
    width: int,
    fold: Sequence[str],
    wrap: Sequence[str],
    title: str | None,
    footer: str | None,
) -> None:
    """The narrow layout: the row's name on its own line(s), then ``header value`` pairs."""
    named = [i for i, c in enumerate(columns) if c in fold] or [0]
    first = named[0]
    indent = " " * _GAP
    others = [c for i, c in enumerate(columns) if i != first and c]
    if title:
        click.echo(title)
    click.echo(columns[first] or "-")
    for line in _flow(others, width - len(indent)):
        click.echo(indent + line)
    for row in cells:
        for line in _fold_text(row[first], width):
            click.echo(line)
        items = [f"{c} {v}" if c else v for i, (c, v) in enumerate(zip(columns, row)) if i != first and v]
        for line in _flow(items, width - len(indent)):
            click.echo(indent + line)
    if footer:
        click.echo(footer)


def warn(message: str) -> None:
    click.echo(f"WARNING {message}", err=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
