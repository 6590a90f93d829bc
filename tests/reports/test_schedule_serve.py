"""The scheduled reports inside the running service (lianfang/runtime.py): the cron job is installed where the
alert engine runs and delivers through alerts.notify_config's channels; a schedule naming an unknown channel stops
the start with one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.db import make_engine, migrate
from core.errors import UserError
from core.settings import Settings, StoreSettings
from devices.registry import RegionSpec, Registry
from lianfang.runtime import Runtime
from tests.alerts.notify_fixtures import WEBHOOK_SECRET, Receiver
from tests.conftest import free_ports
from tests.reports.seed import CREATED, NOW

SCHEDULE = {"name": "weekly", "kind": "coverage", "region": "js", "period": "week", "cron": "0 8 * * 1"}


def _settings(tmp_path: Path, http: Receiver, channels: list[str]) -> Settings:
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    Registry(engine).upsert_regions([RegionSpec("js", "江苏省", "province")], now=CREATED)
    engine.dispose()
    notify = tmp_path / "notify.yaml"
    hook = {"name": "hook", "type": "webhook", "url": f"{http.base}/hook/r", "secret": WEBHOOK_SECRET}
    notify.write_text(yaml.safe_dump({"channels": [hook]}), encoding="utf-8")
    port, device_port = free_ports(2)  # the devices' listener given: mqtt.port + 1 may be taken
    mqtt: Any = {"port": port, "device_port": device_port, "broker_dir": tmp_path / "mosquitto"}
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/registry.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db"),
        mqtt=mqtt,
        alerts={"notify_config": notify, "engine": "inline"},
        joint={"enabled": False},
        reports={"schedules": [SCHEDULE | {"channels": channels}]},
    )


def test_serve_installs_the_job_and_it_delivers(tmp_path: Path, receiver: Receiver) -> None:
    runtime = Runtime(_settings(tmp_path, receiver, ["hook"]), with_ingest=True)
    runtime.start()
    try:
        assert runtime.scheduler is not None
        job = runtime.scheduler.get_job("report-weekly")
        assert job is not None
        nxt = job.next_run_time
        assert nxt.utcoffset().total_seconds() == 8 * 3600 and (nxt.weekday(), nxt.hour, nxt.minute) == (0, 8, 0)
        result = job.func(*job.args, now=NOW)
        assert [(d.channel, d.ok) for d in result] == [("hook", True)], result
        [req] = receiver.accepted("/hook")
        assert req.json()["report"]["region"] == {"id": "js", "name": "江苏省"}
    finally:
        runtime.stop()


def test_an_unknown_channel_stops_the_start(tmp_path: Path, receiver: Receiver) -> None:
    runtime = Runtime(_settings(tmp_path, receiver, ["hook", "sms"]), with_ingest=True)
    with pytest.raises(UserError, match=r"reports\.schedules\[0\]\.channels\[1\]: unknown channel 'sms'"):
        runtime.start()
    assert runtime.scheduler is None and runtime.broker is None  # stopped: nothing left running
