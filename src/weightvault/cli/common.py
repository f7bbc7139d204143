"""Output helpers shared by every command: data to stdout, messages to stderr, ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import numpy as np

__all__ = ["console", "emit_json", "human_bytes", "json_option", "print_table", "warn"]

F = TypeVar("F", bound=Callable[..., Any])
JSON_VERSION = "1"


def json_option(func: F) -> F:
    """The ``--json`` flag every command that prints a table takes."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(func)


def console() -> Any:
    from rich.console import Console

    # Piped output is for scripts and files: never squeeze or wrap columns to a guessed width.
    # markup=False: tensor names like "a[0]" must print as they are, not as rich markup.
    width = None if sys.stdout.isatty() else 400
    return Console(soft_wrap=False, highlight=False, markup=False, width=width)


def _default(obj: Any) -> Any:
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


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    footer: str | None = None,
    justify: dict[str, str] | None = None,
) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False, box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, justify=(justify or {}).get(col, "left"), no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out = console()
    out.print(table)
    if footer:
        out.print(footer)


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
