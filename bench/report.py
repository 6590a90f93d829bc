"""Reports benchmark (issue 13): each report kind built for a city over 90 days of 2,000 devices' history.

    python bench/report.py [--devices N] [--days D] [--short] [--no-influx] [--keep DIR]

A region tree (one province, cities of ten agencies, two buildings per agency) and its devices (per building ten
gates, two sensors, eight meters: a main meter and its subs; ten vehicles per agency: 50 devices an agency) are
registered in a fresh SQLite database; ``devices/backfill.py`` writes D days of history into the embedded SQLite
store (and, when ``influxd`` 1.x is installed, into InfluxDB's InfluxQL read path through its ``/write``, as
tests/influx_servers.py does, reported separately). Then every report kind of ``reports.registry`` is built for
the first city over the D days (``reports.registry.build_report``; a kind whose builder is not available is
reported as such). Prints ONE line: back-fill time and rate, each report's seconds per store, the target (< 10 s
each) met or not, and the load average (the machine may be shared). ``--short``: 200 devices, 14 days.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alerts.calendar import BEIJING, Calendar
from core.db import make_engine, migrate
from core.store import TelemetryStore, WriteBatch
from core.store.side import SqlSideStore
from core.store.sqlite import SqliteStore
from devices.backfill import BackfillOptions, backfill
from devices.registry import RegionSpec, Registry
from devices.sample import demo_device_specs
from devices.sim_cli import backfill_devices
from reports.model import REPORT_KINDS, ReportRequest
from reports.registry import ReportNotAvailable, build_report
from reports.source import LiveSource

TARGET_S = 10.0
END = datetime(2026, 11, 30, tzinfo=BEIJING)  # 90 days back: the National Day holiday and its make-up days
PER_AGENCY = 50  # 2 buildings x 20 devices + 10 vehicles
AGENCIES_PER_CITY = 10
INFLUX_DB = "telemetry"


def bench_regions(devices: int) -> list[RegionSpec]:
    """A province, ceil(agencies / 10) cities (at least 2), agencies of two buildings, all with coordinates."""
    agencies = max(2, math.ceil(devices / PER_AGENCY))
    cities = max(2, math.ceil(agencies / AGENCIES_PER_CITY))
    out = [RegionSpec("bp", "基准省", "province", None, 23.0, 113.0)]
    for a in range(agencies):
        c = a % cities
        city = f"bp-c{c + 1}"
        if a < cities:
            out.append(RegionSpec(city, f"基准市{c + 1}", "city", "bp", 23.0 + 0.5 * c, 113.0 + 0.5 * c))
        k = a // cities
        lat = 23.0 + 0.5 * c + 0.03 * math.sin(k * 1.7)
        lon = 113.0 + 0.5 * c + 0.03 * math.cos(k * 1.7)
        agency = f"{city}-a{k + 1:02d}"
        out.append(RegionSpec(agency, f"基准市{c + 1}第{k + 1}局", "agency", city, lat, lon))
        for b in (1, 2):
            out.append(
                RegionSpec(
                    f"{agency}-b{b}", f"第{k + 1}局{b}号楼", "building", agency, lat + 0.004 * b, lon - 0.004 * b
                )
            )
    return out


class InfluxV1Writer:
    """Back-fill into InfluxDB 1.x: its v1 ``/write`` (line protocol of core/store/influx.py) and the side store."""

    def __init__(self, url: str, paths: dict[str, str], side: SqlSideStore) -> None:
        self.url, self.paths, self.side = url, paths, side
        self.client = httpx.Client(timeout=120)

    def write(self, batch: WriteBatch) -> None:
        from core.store.influx import batch_lines

        lines = batch_lines(batch.readings, batch.events, lambda r: self.paths.get(r, ""))
        for i in range(0, len(lines), 50_000):
            r = self.client.post(
                self.url + "/write",
                params={"db": INFLUX_DB, "precision": "ms"},
                content="\n".join(lines[i : i + 50_000]).encode(),
            )
            r.raise_for_status()
        self.side.write(batch)


def build_all(store: TelemetryStore, engine: Engine, city: str, start: datetime) -> list[tuple[str, str, float]]:
    """(kind, "ok" | why not, seconds) for every report kind."""
    source = LiveSource(engine, store, Calendar())
    out: list[tuple[str, str, float]] = []
    for kind in REPORT_KINDS:
        t0 = time.perf_counter()
        try:
            build_report(source, ReportRequest(kind, city, start, END, END + timedelta(hours=1)))
        except ReportNotAvailable:
            out.append((kind, "not available", 0.0))
            continue
        except Exception as exc:  # a builder that fails is reported, the others still run
            out.append((kind, f"failed: {type(exc).__name__}: {str(exc)[:80]}", time.perf_counter() - t0))
            continue
        out.append((kind, "ok", time.perf_counter() - t0))
    return out


def _fmt(results: list[tuple[str, str, float]]) -> str:
    return ", ".join(f"{k} {s:.2f} s" if why == "ok" else f"{k} {why}" for k, why, s in results)


def _met(results: list[tuple[str, str, float]]) -> str:
    built = [s for _k, why, s in results if why == "ok"]
    if not built:
        return "nothing built"
    return "met" if max(built) < TARGET_S else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--short", action="store_true", help="CI mode: 200 devices, 14 days")
    ap.add_argument("--no-influx", action="store_true", help="only the embedded SQLite store")
    ap.add_argument("--keep", type=Path, default=None, help="keep the data in this directory")
    args = ap.parse_args()
    if args.short:
        args.devices, args.days = 200, 14
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    tmp.mkdir(parents=True, exist_ok=True)
    start = END - timedelta(days=args.days)
    engine = make_engine(f"sqlite:///{tmp}/registry.db")
    migrate(engine)
    registry = Registry(engine)
    regions = bench_regions(args.devices)
    registry.upsert_regions(regions, now=start - timedelta(days=1))
    specs = demo_device_specs(registry.regions(), per_building=20, vehicles_per_agency=10)[: args.devices]
    registry.add_devices(specs, now=start - timedelta(days=1))
    devices, parents = backfill_devices(registry)
    city = "bp-c1"
    opts = BackfillOptions(seed=1)
    parts: list[str] = []

    store = SqliteStore(tmp / "telemetry.db")
    try:
        t0 = time.perf_counter()
        counts = backfill(store, devices, start, END, options=opts, parents=parents)
        fill_s = time.perf_counter() - t0
        records = counts.readings + counts.events
        results = build_all(store, engine, city, start)
    finally:
        store.close()
    parts.append(
        f"sqlite: back-fill {fill_s:.1f} s ({records / 1e6:.2f}M records, {records / fill_s / 1000:.0f}k/s); "
        f"{_fmt(results)}: {_met(results)}"
    )

    influxd = None if args.no_influx else shutil.which("influxd")
    if influxd is None:
        parts.append("influxdb: skipped (influxd not installed)" if not args.no_influx else "influxdb: skipped")
    else:
        from core.store.influx import InfluxStore
        from tests.influx_servers import start_influxd

        server = start_influxd(tmp / "influxdb", INFLUX_DB)
        side = SqlSideStore(make_engine(f"sqlite:///{tmp}/side.db"))
        migrate(side.engine)
        try:
            paths = {r.id: r.path for r in registry.regions()}
            t0 = time.perf_counter()
            backfill(InfluxV1Writer(server.url, paths, side), devices, start, END, options=opts, parents=parents)
            fill_s = time.perf_counter() - t0
            istore = InfluxStore(
                server.url,
                org="-",
                bucket="-",
                token="",
                database=INFLUX_DB,
                side=side,
                timeout_s=120.0,
                region_paths=lambda: paths,
            )
            results = build_all(istore, engine, city, start)
            parts.append(f"influxdb 1.x: back-fill {fill_s:.1f} s; {_fmt(results)}: {_met(results)}")
        finally:
            server.stop()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"report bench: {len(devices)} devices x {args.days} days, city {city}; "
        + "; ".join(parts)
        + f"; target < {TARGET_S:.0f} s each; load {load}"
    )
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
