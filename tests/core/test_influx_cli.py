"""`lianfang store check` against InfluxDB 1.6 and `lianfang store migrate --to influxdb` into VictoriaMetrics
(resumed after the server went away mid-way), its count verification against InfluxDB 1.6."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import StoreUnavailable
from core.protocol import Event, Reading, Rejection
from core.store import WriteBatch
from core.store.influx import InfluxStore, batch_lines
from core.store.side import SqlSideStore
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from lianfang.store_cmd import migrate_sqlite_to_influx, sqlite_counts, verify_counts
from tests.core.test_influx import vm_export
from tests.influx_servers import Server, seed_influxd, sqlite_side
from tests.ingest.conftest import seed_registry

DEVICES = {"meter-0001": "energy_meter", "meter-0002": "energy_meter", "gate-0001": "gate", "car-0001": "vehicle"}


def _env(tmp_path: Path, registry: Registry, url: str, database: str = "lf") -> dict[str, str | None]:
    return {
        "LIANFANG_CONFIG": "",
        "LIANFANG_DATA_DIR": str(tmp_path),
        "LIANFANG_DATABASE_URL": str(registry.engine.url),
        "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
        "LIANFANG_STORE__BACKEND": "influxdb",
        "LIANFANG_STORE__INFLUX_URL": url,
        "LIANFANG_STORE__INFLUX_DATABASE": database,
    }


def _fill_sqlite(path: Path) -> None:
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    store = SqliteStore(path)
    try:
        b = WriteBatch()
        for i in range(40):
            dev = list(DEVICES)[i % 4]
            fields: dict[str, float | bool] = {"energy_kwh": float(i)} if DEVICES[dev] == "energy_meter" else {}
            if dev == "gate-0001":
                fields = {"door_open": i % 8 == 2}
            if dev == "car-0001":
                fields = {"lat": 23.1, "lon": 113.2}
            b.readings.append(Reading(dev, "gd-gz-a01-b1", DEVICES[dev], t0 + i * 1000, i, fields))
        b.events.append(Event("gate-0001", "gd-gz-a01-b1", "gate", t0, 1, "door_forced", {}))
        b.counter("meter-0001").messages = 10
        b.rejections.append(Rejection("meter-0001", "lf/v1/meter-0001/telemetry", "schema", "bad", b"{", t0))
        store.write(b)
    finally:
        store.close()


def test_store_check_against_influxdb_1_6(influxdb: Server, tmp_path: Path, sqlite_registry: Registry) -> None:
    ok = CliRunner().invoke(app, ["store", "check"], env=_env(tmp_path, sqlite_registry, influxdb.url))
    assert ok.exit_code == 0, ok.output
    assert "ok   answers" in ok.stdout and "ok   influxql database: lf: autogen 0s (default)" in ok.stdout
    assert "bucket: not checked: the server has no /api/v2/buckets" in ok.stdout
    assert f"ok   side store: device states and rejections in {sqlite_registry.engine.url}" in ok.stdout
    missing = CliRunner().invoke(
        app, ["store", "check", "--json"], env=_env(tmp_path, sqlite_registry, influxdb.url, "nope")
    )
    assert missing.exit_code == 1
    doc = json.loads(missing.stdout)
    assert not doc["ok"] and any(c["name"] == "influxql database" and not c["ok"] for c in doc["checks"])
    influxdb.stop()
    down = CliRunner().invoke(app, ["store", "check"], env=_env(tmp_path, sqlite_registry, influxdb.url))
    assert down.exit_code == 1 and "FAIL answers" in down.stdout


def test_migrate_resumes_after_the_store_went_away(victoria: Server, tmp_path: Path, sqlite_registry: Registry) -> None:
    vm = victoria
    seed_registry(sqlite_registry)
    _fill_sqlite(tmp_path / "telemetry.db")
    dest = InfluxStore(
        vm.url,
        org="o",
        bucket="b",
        token="t",
        database="lf",
        side=SqlSideStore(sqlite_registry.engine, owns_engine=False),
        timeout_s=2,
        region_paths=lambda: {r.id: r.path for r in sqlite_registry.regions()},
    )
    chunks = 0

    def stop_after_two(n: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            vm.stop()

    checkpoint = tmp_path / "influx-migrate.json"
    try:
        devices = sqlite_registry.snapshot()
        with pytest.raises(StoreUnavailable):
            migrate_sqlite_to_influx(
                tmp_path / "telemetry.db", dest, devices, checkpoint, chunk=7, progress=stop_after_two
            )
    finally:
        dest.close()
    assert json.loads(checkpoint.read_text())["telemetry"] == 14
    vm.start()
    result = CliRunner().invoke(
        app,
        ["store", "migrate", "--to", "influxdb", "--chunk", "7", "--no-verify", "--json"],
        env=_env(tmp_path, sqlite_registry, vm.url),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["copied"] == {"telemetry": 26, "events": 1}
    series = vm_export(vm, '{__name__=~"(energy_meter|gate|vehicle)_seq"}')
    got: dict[str, int] = {}
    for (_, tags), points in series.items():
        labels = dict(tags)
        got[labels["device_id"]] = got.get(labels["device_id"], 0) + len(points)
        region = sqlite_registry.snapshot()[labels["device_id"]].region_id  # telemetry takes the registry's region
        assert labels["region"] == region and labels["region_path"].endswith(f"/{region}/")
        assert labels["region_path"].startswith("/gd/gd-gz/gd-gz-a01/")
    assert got == sqlite_counts(tmp_path / "telemetry.db") == {d: 10 for d in DEVICES}
    assert set(vm_export(vm, '{__name__="events_seq"}')) and checkpoint.exists()
    again = CliRunner().invoke(
        app,
        ["store", "migrate", "--to", "influxdb", "--no-verify", "--json"],  # VictoriaMetrics has no InfluxQL
        env=_env(tmp_path, sqlite_registry, vm.url),
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["copied"] == {"telemetry": 0, "events": 0}
    side = SqlSideStore(sqlite_registry.engine, owns_engine=False)  # the side tables in the registry's database
    assert side.device_states()["meter-0001"].messages == 10
    assert side.rejection_counts() == {("meter-0001", "schema"): 1}  # copied once, not again by the second run


def test_migrate_verification_counts_per_device_on_influxdb_1_6(influxdb: Server, tmp_path: Path) -> None:
    source = tmp_path / "telemetry.db"
    _fill_sqlite(source)
    src = SqliteStore(source)
    try:
        t_all = src.raw("meter-0001", "energy_kwh", 0, 2**62, 100)
    finally:
        src.close()
    assert len(t_all) == 10
    dest = InfluxStore(influxdb.url, org="o", bucket="b", token="", database="lf", side=sqlite_side(tmp_path))
    try:
        t0 = t_all[0][0]
        lines = batch_lines(
            [Reading(d, "r", DEVICES[d], t0 + i * 1000, i, {"x": 1.0}) for i, d in enumerate(list(DEVICES) * 10)][
                :39
            ],  # one point of the last device missing
            [],
        )
        seed_influxd(influxdb, "lf", lines)
        assert verify_counts(source, dest) == [("car-0001", 10, 9)]
    finally:
        dest.close()


def test_open_store_picks_influxdb_with_region_paths_from_the_registry(
    victoria: Server, tmp_path: Path, sqlite_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = victoria
    from core.settings import load_settings
    from lianfang.context import open_store

    seed_registry(sqlite_registry)
    for key, value in _env(tmp_path, sqlite_registry, vm.url).items():
        monkeypatch.setenv(key, value or "")
    monkeypatch.delenv("LIANFANG_CONFIG")
    settings = load_settings()
    assert settings.store.backend == "influxdb"
    store = open_store(settings)
    try:
        assert isinstance(store, InfluxStore) and store.side.where == str(sqlite_registry.engine.url)
        t0 = time.time_ns() // 1_000_000 - 1000
        store.write(WriteBatch(readings=[Reading("car-0001", "gd-gz-a01", "vehicle", t0, 1, {"lat": 23.0})]))
        (series,) = vm_export(vm, '{__name__="vehicle_lat"}')
        assert dict(series[1])["region_path"] == "/gd/gd-gz/gd-gz-a01/"
    finally:
        store.close()
    monkeypatch.setenv("LIANFANG_STORE__BACKEND", "sqlite")
    sqlite = open_store(load_settings())
    try:
        assert isinstance(sqlite, SqliteStore)
    finally:
        sqlite.close()


def test_store_check_of_the_sqlite_backend_and_migrate_refuses_other_targets(
    tmp_path: Path, sqlite_registry: Registry
) -> None:
    env = {**_env(tmp_path, sqlite_registry, "http://127.0.0.1:1"), "LIANFANG_STORE__BACKEND": "sqlite"}
    missing = CliRunner().invoke(app, ["store", "check"], env=env)
    assert missing.exit_code == 1 and "does not exist" in missing.stdout
    _fill_sqlite(tmp_path / "telemetry.db")
    ok = CliRunner().invoke(app, ["store", "check", "--json"], env=env)
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    other = CliRunner().invoke(app, ["store", "migrate", "--to", "postgres"], env=env)
    assert other.exit_code == 1 and "only 'influxdb'" in other.stderr


def test_migrate_source_copies_an_old_side_file_into_the_database(
    victoria: Server, tmp_path: Path, sqlite_registry: Registry
) -> None:
    """The side file of an earlier version (store.influx_side_path, an SQLite store file with device states and
    rejections only) goes into the side tables with --source."""
    seed_registry(sqlite_registry)
    old = tmp_path / "influx-side.db"
    store = SqliteStore(old)
    try:
        b = WriteBatch()
        b.counter("gate-0001").messages = 7
        b.rejections.append(Rejection("gate-0001", "lf/v1/gate-0001/event", "schema", "bad", b"[", 5))
        store.write(b)
    finally:
        store.close()
    env = _env(tmp_path, sqlite_registry, victoria.url)
    result = CliRunner().invoke(
        app, ["store", "migrate", "--to", "influxdb", "--source", str(old), "--no-verify", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["copied"] == {"telemetry": 0, "events": 0}
    side = SqlSideStore(sqlite_registry.engine, owns_engine=False)
    assert side.device_states()["gate-0001"].messages == 7
    assert [r.payload for r in side.rejections("gate-0001", None, 10)] == [b"["]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LIANFANG_STORE__KIND", "sqlite", "store.kind (LIANFANG_STORE__KIND) was replaced by store.backend"),
        ("LIANFANG_STORE__INFLUX_SIDE_PATH", "/tmp/x.db", "live in the SQL database of database_url"),
    ],
)
def test_removed_store_settings_are_refused_with_what_replaced_them(
    tmp_path: Path, sqlite_registry: Registry, variable: str, value: str, expected: str
) -> None:
    env = {**_env(tmp_path, sqlite_registry, "http://127.0.0.1:1"), variable: value}
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 1 and expected in result.stderr
    config = tmp_path / "lianfang.yaml"
    config.write_text(f"store:\n  {variable.removeprefix('LIANFANG_STORE__').lower()}: {value}\n")
    env = {**_env(tmp_path, sqlite_registry, "http://127.0.0.1:1"), "LIANFANG_CONFIG": str(config)}
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 1 and expected in result.stderr and str(config) in result.stderr


def test_config_check_shows_the_configured_store(tmp_path: Path, sqlite_registry: Registry) -> None:
    env = {**_env(tmp_path, sqlite_registry, "http://influx.internal:8086"), "LIANFANG_STORE__INFLUX_TOKEN": "s3"}
    influx = CliRunner().invoke(app, ["config", "check"], env=env)
    assert influx.exit_code == 0, influx.output
    line = next(x for x in influx.stdout.splitlines() if "telemetry store" in x)
    assert "influxdb http://influx.internal:8086 org lianfang bucket telemetry" in line and "token set" in line
    assert "telemetry.db" not in line and "s3" not in influx.stdout
    env["LIANFANG_STORE__BACKEND"] = "sqlite"
    sqlite = CliRunner().invoke(app, ["config", "check"], env=env)
    line = next(x for x in sqlite.stdout.splitlines() if "telemetry store" in x)
    assert f"sqlite {tmp_path / 'telemetry.db'}" in line and "influx" not in line
