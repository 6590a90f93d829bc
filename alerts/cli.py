"""`lianfang rules ...`: validate rule files and explain the effective rules of a device.

Rule files are YAML (see docs/alerts.md). The built-in default packs are always loaded first (unless
``--no-packs``) so that your files can override pack rules by id. User errors print one line per problem on
stderr and exit 1; ``--json`` prints JSON for scripts on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alerts.rules import PACKS_DIR, RuleSet, explain_rows
from core.errors import UserError
from lianfang.context import open_registry, settings_from

rules_app = typer.Typer(
    help="Alert rules: validate rule files, show the effective rules of a device and where each value came from.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
NoPacksOpt = Annotated[bool, typer.Option("--no-packs", help="Do not load the built-in default rule packs.")]


def _load(files: list[Path] | None, no_packs: bool) -> tuple[RuleSet, list[Path]]:
    paths = ([] if no_packs else [PACKS_DIR]) + list(files or [])
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    return RuleSet.load(paths), paths


def _fail(exc: Exception) -> typer.Exit:
    for line in str(exc).splitlines():
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(1)


@rules_app.command("check")
def check(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Rule files or directories of *.yaml (default: only the packs).")
    ] = None,
    no_packs: NoPacksOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Validate rule files without running anything; errors name the file and the field path."""
    try:
        rs, paths = _load(files, no_packs)
    except UserError as exc:
        raise _fail(exc) from exc
    summary = {
        "ok": True,
        "files": [str(p) for p in paths],
        "rules": len(rs.rules),
        "overrides": len(rs.layers),
        "rosters": len(rs.calendar.rosters),
        "sealing_periods": len(rs.calendar.sealing),
    }
    if json_out:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    typer.echo(
        f"ok: {summary['rules']} rules, {summary['overrides']} overrides, {summary['rosters']} roster entries, "
        f"{summary['sealing_periods']} sealing periods"
    )


@rules_app.command("explain")
def explain(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id, e.g. gate-gz-0001.")],
    rules: Annotated[
        list[Path] | None, typer.Option("--rules", "-r", help="Rule files or directories (repeatable).")
    ] = None,
    no_packs: NoPacksOpt = False,
    show_disabled: Annotated[bool, typer.Option("--all", help="Also list disabled rules.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The effective rules of DEVICE (from its type and its place in the region tree) and each value's origin."""
    try:
        rs, _ = _load(rules, no_packs)
        registry = open_registry(settings_from(ctx))
        row = registry.device(device)
        if row is None:
            raise UserError(f"device {device!r} does not exist")
        path = registry.ancestors(row.region_id)
    except UserError as exc:
        raise _fail(exc) from exc
    effective = [r for r in rs.explain(device, row.type, path) if show_disabled or r.enabled]
    rows = explain_rows(effective)
    if json_out:
        typer.echo(
            json.dumps({"device": device, "type": row.type, "region_path": path, "settings": rows}, ensure_ascii=False)
        )
        return
    console = Console()
    console.print(f"{escape(device)} ({row.type}) in {escape(' > '.join(path))}: {len(effective)} rules")
    table = Table("rule", "setting", "value", "from")
    for r in rows:
        table.add_row(r["rule"], r["setting"], escape(json.dumps(r["value"], ensure_ascii=False)), escape(r["source"]))
    console.print(table)
