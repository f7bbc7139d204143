"""``--storage-option KEY=VALUE`` for every CLI command (and the group).

The options are merged into ``WEIGHTVAULT_STORAGE_OPTIONS`` of this process, which
:func:`weightvault.storage.location` reads as the defaults of every URL: so each command works
on URLs without passing options through its own code. Values are JSON where they parse
(``anon=true``, ``concurrency=4``), strings otherwise; a dotted key nests
(``client_kwargs.region_name=eu-west-1``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

__all__ = ["STORAGE_OPTION_HELP", "add_storage_option", "parse_storage_options", "remember"]

STORAGE_OPTION_HELP = (
    "Option for the filesystem of s3://, gs://... URLs (endpoint_url=http://..., anon=true, "
    "part_size=..., concurrency=...); repeatable."
)
ENV = "WEIGHTVAULT_STORAGE_OPTIONS"


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--storage-option")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = out
        *outer, last = key.split(".")
        for part in outer:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key!r} nests under a value", param_hint="--storage-option")
        target[last] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def remember(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    """Click callback: add the options to this process's storage defaults."""
    if not value:
        return
    current = json.loads(os.environ.get(ENV) or "{}")
    os.environ[ENV] = json.dumps(_merge(current, parse_storage_options(value)))


def storage_option() -> click.Option:
    return click.Option(
        ["--storage-option", "storage_options"],
        multiple=True,
        metavar="KEY=VALUE",
        expose_value=False,
        callback=remember,
        help=STORAGE_OPTION_HELP,
    )


def add_storage_option(cmd: click.Command) -> click.Command:
    """Give ``cmd`` the option (once)."""
    if not any(p.name == "storage_options" for p in cmd.params):
        cmd.params.append(storage_option())
    return cmd


class RunDirectory(click.ParamType):
    """A run directory: an existing local directory, or a URL."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from weightvault.storage.location import is_url, local_path

        if is_url(value):
            return value
        path = click.Path(exists=True, file_okay=False).convert(local_path(value), param, ctx)
        from pathlib import Path

        return Path(path)
