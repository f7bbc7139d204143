"""The ``weightvault`` command line.

Each command lives in its own module and is imported only when invoked, so ``weightvault ls`` never
pays for TensorFlow or torch. Errors from the library are caught at one boundary (:func:`main`):
one ``ERROR`` line, a ``TIP`` line when the error carries a hint, exit status 1; the traceback only
with ``-v`` or ``WEIGHTVAULT_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

__all__ = ["cli", "main"]

# command name -> "module:attribute"; kept sorted
COMMANDS = {
    "convert": "weightvault.cli.convert:convert",
    "diff": "weightvault.cli.inspect:diff",
    "export-hw": "weightvault.cli.export_hw:export_hw",
    "formats": "weightvault.cli.inspect:formats",
    "import-hw": "weightvault.cli.export_hw:import_hw",
    "ls": "weightvault.cli.inspect:ls",
    "restore-report": "weightvault.cli.restore:restore_report",
    "runs": "weightvault.cli.runs:runs",
    "show": "weightvault.cli.inspect:show",
    "stats": "weightvault.cli.inspect:stats",
    "verify": "weightvault.cli.inspect:verify",
    "view": "weightvault.cli.view:view",
}
assert list(COMMANDS) == sorted(COMMANDS)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    def invoke(self, ctx: click.Context) -> Any:
        from weightvault.errors import WeightVaultError

        debug = os.environ.get("WEIGHTVAULT_DEBUG") == "1" or (ctx.obj or {}).get("verbose", 0) > 0
        try:
            return super().invoke(ctx)
        except WeightVaultError as exc:
            if debug:
                raise
            click.echo(f"ERROR {exc}", err=True)
            if exc.hint:
                click.echo(f"TIP {exc.hint}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # Whoever read our output has gone (`weightvault ls big.pt | head`): stop quietly, as
            # cat does. Point stdout at /dev/null so the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except (OSError, ValueError, TypeError) as exc:
            # Plain errors from below (a missing file, a bad option value) get the same one-line form.
            if debug:
                raise
            click.echo(f"ERROR {exc}", err=True)
            ctx.exit(1)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                return None
            raise
        cmd: click.Command = getattr(module, attr)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="weightvault")
@click.option("-v", "--verbose", count=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Persist, recover, convert, inspect and export neural-network weights."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="weightvault")
