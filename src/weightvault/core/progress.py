"""Progress bars that show on a terminal and stay silent when output is piped or captured."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["progress_bar"]

# Below this many bytes a bar would only flicker.
MIN_BYTES = 64 * 1024 * 1024


def _interactive() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(
    label: str, total: int, *, enabled: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(nbytes)`` callback; draws a rich bar on stderr only when interactive."""
    if enabled is None:
        enabled = _interactive() and total >= MIN_BYTES
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
