"""``weightvault restore-report CKPT --target TARGET``: what a restore would load, without the model.

Compares the names and shapes of a checkpoint with a target (another checkpoint, or a JSON/YAML/
text list of expected names and shapes) through the same planning that ``weightvault.restore``
uses, and prints loaded / missing / unexpected / shape-mismatched / skipped names. Reads no
tensor data, so it is instant on multi-GB checkpoints.
"""

from __future__ import annotations

import click

from weightvault.cli.common import emit_json, json_option, print_table
from weightvault.rules import RULES

__all__ = ["restore_report"]


def _split_pairs(items: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        pattern, sep, repl = item.partition("=")
        if not sep:
            what = "REGEX=REPLACEMENT" if option == "--rename" else "LAYER=KIND"
            raise click.BadParameter(f"{item!r} is not {what}", param_hint=option)
        pairs.append((pattern, repl))
    return pairs


@click.command("restore-report")
@click.argument("checkpoint")  # a TF1 prefix (model.ckpt-1000) is no file of its own
@click.option(
    "--target",
    "-t",
    required=True,
    type=click.Path(exists=True),
    help="Checkpoint of the model to restore into, or a .json/.yaml/.txt list of names [and shapes].",
)
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only these model names (repeatable)."
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Leave these model names out (repeatable)."
)
@click.option(
    "--rename",
    multiple=True,
    metavar="REGEX=REPL",
    help="Rename checkpoint names, applied in order.",
)
@click.option(
    "--rename-file",
    type=click.Path(exists=True),
    default=None,
    help="JSON/YAML name map or [regex, repl] list.",
)
@click.option(
    "--strip-prefix",
    multiple=True,
    metavar="PREFIX",
    help="Decorations to strip from names (default: module. and _orig_mod.).",
)
@click.option(
    "--source-key", default=None, help="Group of the checkpoint holding the model weights."
)
@click.option(
    "--target-key", default=None, help="Group of the target checkpoint holding the model weights."
)
@click.option(
    "--use-ema",
    "--ema",
    "use_ema",
    is_flag=True,
    help="Compare the EMA shadow weights instead of the raw ones.",
)
@click.option(
    "--all", "show_all", is_flag=True, help="List loaded names too (default: only problems)."
)
@click.option(
    "--rules",
    type=click.Choice(RULES),
    default=None,
    help="Layout rule set applied to CHECKPOINT first (as in convert), e.g. tf1-to-torch.",
)
@click.option(
    "--hint", "hints", multiple=True, metavar="LAYER=KIND", help="Layer kind for --rules (globs allowed)."
)
@click.option("--strict", is_flag=True, help="Exit with status 1 unless everything matches.")
@json_option
def restore_report(
    checkpoint: str,
    target: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    rename: tuple[str, ...],
    rename_file: str | None,
    strip_prefix: tuple[str, ...],
    source_key: str | None,
    target_key: str | None,
    use_ema: bool,
    show_all: bool,
    rules: str | None,
    hints: tuple[str, ...],
    strict: bool,
    as_json: bool,
) -> None:
    """Show what restoring CHECKPOINT into a model shaped like TARGET would load.

    \b
    Examples:
      weightvault restore-report runs/exp1/step-00001000 --target new_model.safetensors
      weightvault restore-report ddp.pt -t expected.txt --exclude 'head.*' --json
      weightvault restore-report run/model.ckpt-1000 -t torch_model.pt --rules tf1-to-torch
    """
    from weightvault.checkpoint.restore import DEFAULT_STRIP_PREFIXES, compare

    renames = _split_pairs(rename, "--rename")
    if rename_file and renames:
        raise click.UsageError("use either --rename or --rename-file")
    rename_arg: object = rename_file or renames or None
    report = compare(
        checkpoint,
        target,
        include=list(include) or None,
        exclude=list(exclude) or None,
        rename=rename_arg,  # type: ignore[arg-type]
        strip_prefixes=tuple(strip_prefix) or DEFAULT_STRIP_PREFIXES,
        use_ema=use_ema,
        source_key=source_key,
        target_key=target_key,
        rules=rules,
        hints=dict(_split_pairs(hints, "--hint")) or None,
    )
    if as_json:
        emit_json({"report": report.to_dict()})
    else:
        rows = [r for r in report.rows() if show_all or not r[0].startswith("loaded")]
        print_table(
            ["status", "model name", "checkpoint key", "checkpoint shape", "model shape"],
            rows,
            footer=report.summary() + ("" if show_all else "  (--all lists loaded names)"),
            fold=("model name", "checkpoint key"),
        )
    if strict and not report.ok:
        raise click.exceptions.Exit(1)
