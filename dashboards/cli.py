"""`lianfang dashboards ...`: write the generated dashboards, check them, push them to a Grafana.

Pushing needs only httpx: no Grafana client library is installed (grafana-client brings urllib3-future, which
shadows urllib3). The builder needs grafana-foundation-sdk (the ``dashboards`` extra); ``push`` does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.errors import UserError
from dashboards.push import FOLDER_TITLE, FOLDER_UID, GrafanaClient, push

GENERATED = Path(__file__).parent / "generated"

dashboards_app = typer.Typer(
    help="Grafana dashboards as code: build the JSON, check it, push it to a Grafana (docs/dashboards.md).",
    no_args_is_help=True,
)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


@dashboards_app.command("push")
def push_cmd(
    url: Annotated[str, typer.Option(help="Grafana's base URL, e.g. http://grafana:3000")],
    token: Annotated[
        str, typer.Option(envvar="LIANFANG_GRAFANA_TOKEN", help="a service-account token (Editor or Admin)")
    ],
    folder_uid: Annotated[str, typer.Option(help="the folder's uid (created when missing)")] = FOLDER_UID,
    folder_title: Annotated[str, typer.Option(help="the folder's title when it is created")] = FOLDER_TITLE,
    directory: Annotated[Path, typer.Option("--dir", help="where the JSON files are")] = GENERATED,
    tile_url: Annotated[
        str | None,
        typer.Option(
            help="the maps' basemap: an internal XYZ tile server, e.g. http://tiles.internal/{z}/{x}/{y}.png "
            "(default: none, markers on a blank map, nothing fetched from the internet)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Send every dashboard in --dir to Grafana (POST /api/dashboards/db, overwrite) into the folder."""
    files = sorted(directory.glob("*.json"))
    if not files:
        _fail(f"no dashboard JSON files in {directory}")
    try:
        with GrafanaClient(url, token) as client:
            done = push(client, files, folder_uid=folder_uid, folder_title=folder_title, tile_url=tile_url)
    except UserError as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps([{"file": p.file, "uid": p.uid, "url": p.url, "version": p.version} for p in done]))
        return
    for p in done:
        typer.echo(f"{p.uid}\t{p.url}\tversion {p.version}")


@dashboards_app.command("build")
def build_cmd(
    check: Annotated[bool, typer.Option(help="only check that the committed JSON matches the builder")] = False,
) -> None:
    """Write dashboards/generated/*.json from dashboards/build.py (needs the `dashboards` extra)."""
    try:
        from dashboards import build
    except ImportError as exc:
        _fail(f"the dashboard builder needs grafana-foundation-sdk: pip install 'lianfang[dashboards]' ({exc})")
        return
    if check:
        bad = build.stale_files()
        if bad:
            _fail("dashboards out of date (run `make dashboards`): " + ", ".join(bad))
        typer.echo("dashboards up to date")
        return
    for path in build.write():
        typer.echo(str(path))
