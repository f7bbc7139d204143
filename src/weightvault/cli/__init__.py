"""The ``weightvault`` command line.

Each command lives in its own module and is imported only when invoked, so ``weightvault ls`` never
pays for TensorFlow or torch. Errors are caught at one boundary (:meth:`LazyGroup.invoke`):
one ``ERROR`` line, a ``TIP`` line when the error carries a hint, exit status 2 (130 on Ctrl-C);
the traceback only with ``-v`` or ``WEIGHTVAULT_DEBUG=1``. Foreign exceptions (a parser's
``KeyError``, ``zlib.error``...) and our own bugs get the same one line (:mod:`.boundary`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from weightvault.core.lazy import LazyTable

__all__ = ["EXIT_DIFFERS", "EXIT_ERROR", "EXIT_INTERRUPTED", "cli", "main"]

# Exit statuses (README, "Exit status"): 0 success; 1 the answer is "no" (``diff``: the files
# differ, ``verify``: verification failed); 2 the command could not do its work (a usage error,
# as click reports it, or an unreadable file, unknown format, bad option: every ERROR line);
# 130 interrupted (Ctrl-C), as shells report SIGINT.
EXIT_DIFFERS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# command name -> "module:attribute", imported when the command runs (or --help lists it); sorted
COMMANDS = LazyTable(
    {
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
    },
    what="command",
)
assert list(COMMANDS) == sorted(COMMANDS)


class _CommandContext(click.Context):
    """A command's context that the group can find again after the command failed.

    ``meta`` is shared by a context and its children, so the group reads the failed command's
    arguments (the files it was reading) from its own context.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meta[_COMMAND_CONTEXT] = self


_COMMAND_CONTEXT = "weightvault.command_context"
# click's own exceptions carry their own message and exit status; they are not errors to rewrite.
_CLICK_EXCEPTIONS = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


def _debug(ctx: click.Context) -> bool:
    # ctx.params, not ctx.obj: obj is filled by the group's callback, which runs inside invoke.
    return os.environ.get("WEIGHTVAULT_DEBUG") == "1" or int(ctx.params.get("verbose") or 0) > 0


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; whatever escapes it becomes one ERROR line (see cli/boundary.py)."""
        try:
            return super().invoke(ctx)
        except _CLICK_EXCEPTIONS:
            raise
        except BrokenPipeError:
            # Whoever read our output has gone (`weightvault ls big.pt | head`): stop quietly, as
            # cat does. Point stdout at /dev/null so the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if _debug(ctx):
                raise
            self._report(ctx, exc)
            ctx.exit(EXIT_ERROR)

    @staticmethod
    def _report(ctx: click.Context, exc: BaseException) -> None:
        from weightvault.cli.boundary import error_line, paths_of

        line = error_line(exc, paths_of(ctx.meta.get(_COMMAND_CONTEXT)))
        click.echo(f"ERROR {line.message}", err=True)
        if line.tip:
            click.echo(f"TIP {line.tip}", err=True)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name = COMMANDS.target(name).partition(":")[0]
        try:
            cmd: click.Command = COMMANDS[name]
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                return None
            raise
        cmd.context_class = _CommandContext
        from weightvault.storage.cli import add_storage_option  # object storage (#17)

        return add_storage_option(cmd)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="weightvault")
@click.option("-v", "--verbose", count=True, help="Show tracebacks on errors.")
@click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
    expose_value=False, callback=lambda c, p, v: _remember_storage_options(c, p, v),
    help="Option for the filesystem of s3://, gs://... URLs (endpoint_url=..., anon=true); "
    "repeatable, also after the command.",
)  # fmt: skip
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Persist, recover, convert, inspect and export neural-network weights."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def _remember_storage_options(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    from weightvault.storage.cli import remember  # object storage (#17)

    remember(ctx, param, value)


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="weightvault")
