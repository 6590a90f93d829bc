"""`lianfang store check` and `lianfang store migrate --to influxdb` (docs/influxdb.md).

``check`` says whether the configured telemetry store answers and, for InfluxDB, whether the bucket exists (with
its retention, InfluxDB 2's ``/api/v2/buckets``) and whether the InfluxQL database / DBRP mapping named
``store.influx_database`` answers with its retention policies (``SHOW RETENTION POLICIES``, any server speaking
InfluxQL).

``migrate`` copies the embedded SQLite store's telemetry and events into InfluxDB in chunks of ``--chunk`` rows
(rowid order), writing a checkpoint file after every chunk: run it again after an interruption and it goes on
from there. Device states and rejections are copied (once) into the side tables in the SQL database. At the end
it compares the points per device in InfluxDB (InfluxQL ``count(seq)``) with the rows per device in SQLite.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer

from core.db import make_engine
from core.errors import LianfangError, StoreUnavailable
from core.protocol import DeviceInfo, Event, Reading, Rejection
from core.settings import Settings
from core.store import DeviceState
from core.store.influx import InfluxStore, batch_lines
from core.store.influxql import QueryError, ident
from core.store.side import SqlSideStore
from ingest.metrics import observe_side_store
from lianfang.context import open_registry, open_store, settings_from

store_app = typer.Typer(help="The telemetry store: check it, migrate it to InfluxDB.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def influx_store(settings: Settings, region_paths: Callable[[], Mapping[str, str]] | None = None) -> InfluxStore:
    """The InfluxDB store of the settings, its side store on the SQL database of ``database_url`` (its own engine;
    the tables come from the migrations, which every command that opens the registry runs)."""
    st = settings.store
    return InfluxStore(
        st.influx_url,
        org=st.influx_org,
        bucket=st.influx_bucket,
        token=st.influx_token.get_secret_value(),
        database=st.influx_database,
        side=observe_side_store(  # its flushes in lianfang_ingest_side_store_* (relayed from ingest's process)
            SqlSideStore(make_engine(settings.database_url), flush_interval_s=st.side_flush_interval_s)
        ),
        region_paths=region_paths,
    )


def influx_checks(settings: Settings, store: InfluxStore) -> list[Check]:
    st = settings.store
    checks = [Check("answers", store.ql.ping(), f"{st.influx_url}/ping")]
    if not checks[0].ok:
        return checks
    token = st.influx_token.get_secret_value()
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        r = httpx.get(
            f"{st.influx_url.rstrip('/')}/api/v2/buckets",
            params={"name": st.influx_bucket, "org": st.influx_org},
            headers=headers,
            timeout=10,
        )
        if r.status_code == 200:
            buckets = r.json().get("buckets", [])
            if buckets:
                rules = buckets[0].get("retentionRules") or []
                every = int(rules[0].get("everySeconds", 0)) if rules else 0
                keep = f"{every / 86400:g} days" if every else "forever"
                checks.append(Check("bucket", True, f"{st.influx_bucket} in org {st.influx_org}, retention {keep}"))
            else:
                checks.append(Check("bucket", False, f"no bucket {st.influx_bucket} in org {st.influx_org}"))
        elif r.status_code in (401, 403):
            checks.append(Check("bucket", False, f"the token may not read buckets (HTTP {r.status_code})"))
        else:
            checks.append(
                Check("bucket", True, f"not checked: the server has no /api/v2/buckets (HTTP {r.status_code})")
            )
    except httpx.HTTPError as exc:
        checks.append(Check("bucket", False, f"{type(exc).__name__}: {exc}"))
    try:
        series = store.ql.query(f"SHOW RETENTION POLICIES ON {ident(st.influx_database)}")
        rows = [row for s in series for row in s.rows()]
        rps = ", ".join(
            f"{row.get('name')} {row.get('duration')}{' (default)' if row.get('default') else ''}" for row in rows
        )
        checks.append(Check("influxql database", bool(rows), f"{st.influx_database}: {rps or 'no retention policy'}"))
    except (QueryError, StoreUnavailable) as exc:
        checks.append(Check("influxql database", False, f"{st.influx_database} (DBRP mapping): {exc}"))
    side_ok = store.side.ping()
    side = f"device states and rejections in {store.side.where}"
    checks.append(Check("side store", side_ok, side if side_ok else f"{side}: no answer or not migrated"))
    return checks


@store_app.command("check")
def check(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Say whether the configured telemetry store answers and has the expected bucket, retention and mapping."""
    settings = settings_from(ctx)
    if settings.store.backend == "influxdb":
        store = influx_store(settings)
        try:
            checks = influx_checks(settings, store)
        finally:
            store.close()
    else:
        path = settings.store.sqlite_path
        if not path.exists():
            checks = [Check("answers", False, f"{path} does not exist (yet)")]
        else:
            s = open_store(settings)
            try:
                checks = [Check("answers", s.ping(), f"sqlite {path}")]
            finally:
                s.close()
    ok = all(c.ok for c in checks)
    if as_json:
        typer.echo(json.dumps({"backend": settings.store.backend, "ok": ok, "checks": [c.__dict__ for c in checks]}))
    else:
        for c in checks:
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    if not ok:
        raise typer.Exit(1)


# --- migrate ------------------------------------------------------------------------------------------------


def _load_checkpoint(path: Path, source: Path) -> dict[str, int]:
    if not path.exists():
        return {"telemetry": 0, "events": 0, "side": 0}
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("source") != str(source.resolve()):
        raise LianfangError(f"checkpoint {path} is for {doc.get('source')}, not {source}: remove it to start over")
    return {"telemetry": int(doc["telemetry"]), "events": int(doc["events"]), "side": int(doc.get("side", 0))}


def _save_checkpoint(path: Path, source: Path, pos: Mapping[str, int]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"source": str(source.resolve()), **pos}), encoding="utf-8")
    os.replace(tmp, path)


def migrate_sqlite_to_influx(
    source: Path,
    dest: InfluxStore,
    devices: Mapping[str, DeviceInfo],
    checkpoint: Path,
    *,
    chunk: int = 5000,
    progress: Any = None,
) -> dict[str, int]:
    """Copy telemetry and events (resumable from ``checkpoint``), then device states and rejections. Returns the
    rows copied in this run per table."""
    pos = _load_checkpoint(checkpoint, source)
    copied = {"telemetry": 0, "events": 0}
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:

        def info(device_id: str) -> tuple[str, str]:
            d = devices.get(device_id)
            return (d.device_type, d.region_id) if d is not None else ("sensor", "")

        while True:
            rows = conn.execute(
                "SELECT rowid, device_id, ts, seq, fields FROM telemetry WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (pos["telemetry"], chunk),
            ).fetchall()
            if not rows:
                break
            readings = []
            for _, dev, ts, seq, fields in rows:
                dtype, region = info(dev)
                readings.append(Reading(dev, region, dtype, int(ts), seq, orjson.loads(fields)))
            dest.write_lines(batch_lines(readings, [], dest.region_path))
            pos["telemetry"] = int(rows[-1][0])
            copied["telemetry"] += len(rows)
            _save_checkpoint(checkpoint, source, pos)
            if progress is not None:
                progress(len(rows))
        while True:
            erows = conn.execute(
                "SELECT rowid, device_id, ts, type, region_id, seq, data FROM events WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?",
                (pos["events"], chunk),
            ).fetchall()
            if not erows:
                break
            events = [
                Event(dev, region, info(dev)[0], int(ts), seq, etype, orjson.loads(data))
                for _, dev, ts, etype, region, seq, data in erows
            ]
            dest.write_lines(batch_lines([], events, dest.region_path))
            pos["events"] = int(erows[-1][0])
            copied["events"] += len(erows)
            _save_checkpoint(checkpoint, source, pos)
            if progress is not None:
                progress(len(erows))
    finally:
        conn.close()
    if not pos["side"]:  # once: a rerun after the end must not append the rejections again
        copy_side(source, dest.side)
        pos["side"] = 1
        _save_checkpoint(checkpoint, source, pos)
    return copied


def copy_side(source: Path, side: SqlSideStore, chunk: int = 5000) -> tuple[int, int]:
    """Device states (replacing the side store's row of each device) and rejections (appended) of an SQLite store
    file into the side store; returns (devices, rejections). Run it once: rejections copied twice are there twice."""
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        states = [
            DeviceState(*row)
            for row in conn.execute(
                "SELECT device_id, last_seen_ms, status, status_ms, fw, messages, gaps, duplicates, nonstandard, "
                "rejected FROM device_state ORDER BY device_id"
            )
        ]
        side.import_rows(states, [])
        n_rej, last = 0, 0
        while True:
            rows = conn.execute(
                "SELECT id, device_id, topic, reason, detail, payload, received_ms FROM rejections WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (last, chunk),
            ).fetchall()
            if not rows:
                break
            side.import_rows([], [Rejection(d, t, r, de, bytes(p), int(ms)) for _, d, t, r, de, p, ms in rows])
            last, n_rej = int(rows[-1][0]), n_rej + len(rows)
    finally:
        conn.close()
    return len(states), n_rej


def sqlite_counts(source: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        return {str(d): int(n) for d, n in conn.execute("SELECT device_id, count(*) FROM telemetry GROUP BY 1")}
    finally:
        conn.close()


def verify_counts(source: Path, dest: InfluxStore) -> list[tuple[str, int, int]]:
    """(device, rows in SQLite, points in InfluxDB) for every device where they differ; empty when all match."""
    want = sqlite_counts(source)
    have = dest.counts_by_device()
    return [
        (d, want.get(d, 0), have.get(d, 0)) for d in sorted(set(want) | set(have)) if want.get(d, 0) != have.get(d, 0)
    ]


@store_app.command("migrate")
def migrate(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="Destination backend (only 'influxdb').")] = "influxdb",
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="Rows per write.")] = 5000,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Progress file (default: DATA_DIR/influx-migrate.json).")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare counts per device at the end.")] = True,
    source_file: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="SQLite store file to copy (default: store.sqlite_path). An InfluxDB side file of an earlier "
            "version (store.influx_side_path) is one too: its device states and rejections go into the database.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy the embedded SQLite store's history into InfluxDB; resumable; verified by counts per device.

    Device states and rejections go into the side tables of the SQL database (database_url)."""
    if to != "influxdb":
        typer.echo(f"error: --to {to}: only 'influxdb' is supported", err=True)
        raise typer.Exit(1)
    settings = settings_from(ctx)
    source = source_file or settings.store.sqlite_path
    if not source.exists():
        typer.echo(f"error: no SQLite store at {source}", err=True)
        raise typer.Exit(1)
    cp = checkpoint or settings.data_dir / "influx-migrate.json"
    registry = open_registry(settings)
    try:
        devices = registry.snapshot()
        paths = {r.id: r.path for r in registry.regions()}
    finally:
        registry.engine.dispose()
    dest = influx_store(settings, region_paths=lambda: paths)
    try:
        try:
            copied = migrate_sqlite_to_influx(source, dest, devices, cp, chunk=chunk)
        except StoreUnavailable as exc:
            typer.echo(f"error: {exc}; run the command again to resume from {cp}", err=True)
            raise typer.Exit(1) from exc
        except LianfangError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        mismatches = verify_counts(source, dest) if verify else []
    finally:
        dest.close()
    if as_json:
        typer.echo(json.dumps({"copied": copied, "verified": verify, "mismatches": [list(m) for m in mismatches]}))
    else:
        typer.echo(f"copied {copied['telemetry']} telemetry rows and {copied['events']} events (checkpoint {cp})")
        if verify and not mismatches:
            typer.echo("verified: points per device in InfluxDB match rows per device in SQLite")
        for dev, want, have in mismatches[:50]:
            typer.echo(f"MISMATCH {dev}: {want} rows in SQLite, {have} points in InfluxDB", err=True)
    if mismatches:
        raise typer.Exit(1)
