"""`lianfang rules ...`: validate rule files and explain the effective rules of a device.

Rule files are YAML (see docs/alerts.md). The built-in default packs are always loaded first (unless
``--no-packs``) so that your files can override pack rules by id. The rules and overrides edited through the API
(stored in the database of the settings) come last, as in the running service, unless ``--no-api``. User errors
print one line per problem on stderr and exit 1; ``--json`` prints JSON for scripts on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine

from alerts.rule_check import Known
from alerts.rule_store import API_ORIGIN, load_rules
from alerts.rules import PACKS_DIR, RuleSet, explain_rows
from core.cliout import note, print_table
from core.errors import StoreUnavailable, UserError
from core.settings import Settings
from devices.cli_context import open_registry, settings_from
from devices.registry import Registry
from joint.patterns import PACKS_DIR as JOINT_PACKS
from joint.patterns import load_patterns

rules_app = typer.Typer(
    help="Alert rules: validate rule files, show the effective rules of a device and where each value came from.",
    no_args_is_help=True,
)

PatternsOpt = Annotated[
    list[Path] | None,
    typer.Option("--patterns", "-p", help="Correlation pattern files or directories (joint/, repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
NoPacksOpt = Annotated[bool, typer.Option("--no-packs", help="Do not load the built-in default rule packs.")]
NoApiOpt = Annotated[
    bool, typer.Option("--no-api", help="Leave out the rules and overrides edited through the API (database).")
]


def _paths(files: list[Path] | None, no_packs: bool) -> list[Path]:
    paths = ([] if no_packs else [PACKS_DIR]) + list(files or [])
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    return paths


def _load(
    files: list[Path] | None, no_packs: bool, engine: Engine | None = None
) -> tuple[RuleSet, list[Path], list[str]]:
    """The files' rule set plus (with an engine) the API layer; the problems (rules that never match, API entries
    that were skipped), one line each."""
    paths = _paths(files, no_packs)
    built = load_rules(paths, engine)
    return built.rules, paths, built.problems


def _registry(settings: Settings) -> Registry | None:
    """The registry (regions, devices, the API layer); None for a SQLite file that does not exist yet."""
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if not path or path == ":memory:" or not Path(path).exists():
            return None
    return open_registry(settings)


def _fail(exc: Exception) -> typer.Exit:
    for line in str(exc).splitlines():
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(1)


@rules_app.command("check")
def check(
    ctx: typer.Context,
    files: Annotated[
        list[Path] | None, typer.Argument(help="Rule files or directories of *.yaml (default: only the packs).")
    ] = None,
    no_packs: NoPacksOpt = False,
    no_api: NoApiOpt = False,
    json_out: JsonOpt = False,
    patterns: PatternsOpt = None,
) -> None:
    """Validate rule files without running anything; errors name the file and the field path. A rule that can never
    match is an error: a field, event or event value PROTOCOL.md does not have for the rule's device types, a region
    or device the registry does not have (with the closest known name). Rules and overrides edited through the API
    that no longer fit the files are errors too (the service skips them). Warnings (stderr) do not fail."""
    try:
        registry = _registry(settings_from(ctx))
        engine = None if no_api or registry is None else registry.engine
        paths = _paths(files, no_packs)
        built = load_rules(paths, engine, Known.from_registry(registry) if registry is not None else None)
    except (UserError, StoreUnavailable) as exc:
        raise _fail(exc) from exc
    rs, problems, warns = built.rules, built.problems, list(built.warnings)
    try:  # correlation patterns (joint/, docs/joint.md): the X packs and joint.patterns_paths, plus --patterns
        joint = load_patterns(
            ([] if no_packs else [JOINT_PACKS]) + list(settings_from(ctx).joint.patterns_paths) + list(patterns or []),
            rs.rules,
            Known.from_registry(registry) if registry is not None else None,
            engine,  # with the patterns and overrides edited through the API (joint/pattern_store.py)
        )
    except UserError as exc:
        raise _fail(exc) from exc
    problems, warns = problems + joint.problems, warns + joint.warnings
    if registry is None:
        warns.append("no registry database yet: the regions and devices rules name are not checked")
    for line in warns:
        typer.echo(f"warning: {line}", err=True)
    summary = {
        "ok": not problems,
        "files": [str(p) for p in paths],
        "rules": len(rs.rules),
        "overrides": len(rs.layers),
        "api_rules": sum(1 for origin in rs.rule_origin.values() if origin == API_ORIGIN),
        "api_overrides": sum(1 for layer in rs.layers if layer.origin.startswith(f"{API_ORIGIN} override ")),
        "rosters": len(rs.calendar.rosters),
        "sealing_periods": len(rs.calendar.sealing),
        "patterns": len(joint.patterns.patterns),
        "problems": problems,
        "warnings": warns,
    }
    if json_out:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        if problems:
            raise typer.Exit(1)
        return
    if problems:
        raise _fail(UserError("\n".join(problems)))
    typer.echo(
        f"ok: {summary['rules']} rules ({summary['api_rules']} from the API), {summary['overrides']} overrides "
        f"({summary['api_overrides']} from the API), {summary['rosters']} roster entries, "
        f"{summary['sealing_periods']} sealing periods, {summary['patterns']} correlation patterns"
    )


@rules_app.command("explain")
def explain(
    ctx: typer.Context,
    device: Annotated[str, typer.Argument(help="Device id, e.g. gate-gz-0001.")],
    rules: Annotated[
        list[Path] | None, typer.Option("--rules", "-r", help="Rule files or directories (repeatable).")
    ] = None,
    no_packs: NoPacksOpt = False,
    no_api: NoApiOpt = False,
    show_disabled: Annotated[bool, typer.Option("--all", help="Also list disabled rules.")] = False,
    json_out: JsonOpt = False,
    patterns: PatternsOpt = None,
    show_patterns: Annotated[
        bool, typer.Option("--joint", help="Also show the correlation patterns and routing in the device's region.")
    ] = False,
) -> None:
    """The effective rules of DEVICE (from its type and its place in the region tree) and each value's origin."""
    try:
        registry = open_registry(settings_from(ctx))
        rs, _, problems = _load(rules, no_packs, None if no_api else registry.engine)
        for line in problems:
            typer.echo(f"warning: {line}", err=True)
        row = registry.device(device)
        if row is None:
            raise UserError(f"device {device!r} does not exist")
        path = registry.ancestors(row.region_id)
    except (UserError, StoreUnavailable) as exc:
        raise _fail(exc) from exc
    effective = [r for r in rs.explain(device, row.type, path) if show_disabled or r.enabled]
    rows = explain_rows(effective)
    if show_patterns:  # correlation patterns as they apply on the device's region path (joint/patterns.py)
        try:
            paths = ([] if no_packs else [JOINT_PACKS]) + list(settings_from(ctx).joint.patterns_paths)
            engine = None if no_api else registry.engine  # with the API's patterns and overrides
            joint = load_patterns(paths + list(patterns or []), rs.rules, None, engine).patterns
        except UserError as exc:
            raise _fail(exc) from exc
        rows += [{**r, "rule": r["pattern"]} for r in joint.explain_rows(path)]
    if json_out:
        typer.echo(
            json.dumps({"device": device, "type": row.type, "region_path": path, "settings": rows}, ensure_ascii=False)
        )
        return
    note(f"{device} ({row.type}) in {' > '.join(path)}: {len(effective)} rules")
    print_table(
        ("rule", "setting", "value", "from"),
        [(r["rule"], r["setting"], json.dumps(r["value"], ensure_ascii=False), r["source"]) for r in rows],
    )
