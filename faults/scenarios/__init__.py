"""Fault scenarios: one module per fault, each with ``NAME``, ``EXPECT`` (one line) and ``run(ctx) -> Result``.

A scenario starts its own broker and ``lianfang serve`` (:mod:`faults.env`), drives the fleet
(:mod:`faults.publisher`), injects its fault, watches ``/health/ready``, ``/metrics`` and the alerts, lets the
platform recover, then counts from the telemetry database. Its checks state the correct behaviour (PROTOCOL.md
v1.1 and issue 8); a scenario whose fix has not landed fails, it is not softened.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings
from devices.broker import BrokerConfig
from faults.env import ALL_DEVICES, BUFFERED, POISON, UNBUFFERED, FaultEnv, Observation, Template
from faults.publisher import FleetPublisher

NA = "n/a"


@dataclass(frozen=True)
class Ctx:
    template: Template
    root: Path
    short: bool

    def pick(self, short: float, full: float) -> float:
        return short if self.short else full

    def serve_env(self) -> dict[str, str]:
        """Short mode: small timing knobs (stall bound, resend settle and answer timeout) so that a scenario
        sees in seconds what the defaults show in tens of seconds. The full run keeps the defaults."""
        if not self.short:
            return {}
        wanted = {
            ("ingest", "stall_after_s"): "3",
            ("resend", "settle_s"): "1",
            ("resend", "answer_timeout_s"): "5",
        }
        return {
            f"LIANFANG_{section.upper()}__{key.upper()}": value
            for (section, key), value in wanted.items()
            if section in Settings.model_fields
            and key in getattr(Settings.model_fields[section].annotation, "model_fields", {})
        }

    def broker_overrides(self, **kw: Any) -> dict[str, Any]:
        """BrokerConfig overrides; short mode: $SYS counters every second (broker drops seen quickly)."""
        fields = BrokerConfig.__dataclass_fields__
        if self.short and "sys_interval_s" in fields:
            kw.setdefault("sys_interval_s", 1)
        return {k: v for k, v in kw.items() if k in fields}


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Counts:
    sent: int = 0
    acked: int = 0
    stored: int = 0
    lost_buffered: int = 0
    lost_unbuffered: int = 0
    duplicated: int = 0
    per_device_lost: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.lost_buffered + self.lost_unbuffered


@dataclass
class Result:
    name: str
    expect: str
    counts: Counts = field(default_factory=Counts)
    ready: float | str | None = NA
    metrics: float | str | None = NA
    alerts: float | str | None = NA
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    skipped: str = ""  # the fault cannot be made here (e.g. no permission to mount); the reason

    @property
    def passed(self) -> bool:
        return not self.skipped and not self.error and all(c.ok for c in self.checks)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, bool(ok), detail))

    def line(self) -> str:
        def t(v: float | str | None) -> str:
            if v is None:
                return "not seen"
            return v if isinstance(v, str) else f"{v:.1f}s"

        c = self.counts
        failed = [f"{x.what}{' (' + x.detail + ')' if x.detail else ''}" for x in self.checks if not x.ok]
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(([self.error] if self.error else []) + failed)
        if self.skipped:
            verdict = f"SKIP: {self.skipped}"
        return (
            f"fault {self.name:<22} sent={c.sent} pubacked={c.acked} stored={c.stored} lost={c.lost} "
            f"(buffered {c.lost_buffered}, unbuffered {c.lost_unbuffered}) duplicated={c.duplicated} | "
            f"visible: ready={t(self.ready)} metrics={t(self.metrics)} alerts={t(self.alerts)} | "
            f"{self.seconds:.0f}s | {verdict}"
        )


# --- shared steps -------------------------------------------------------------------------------------------------


def fleet(env: FaultEnv, devices: Iterable[str] = (*BUFFERED, *UNBUFFERED)) -> FleetPublisher:
    creds = {d: env.t.secrets[d] for d in devices}
    pub = FleetPublisher(env.broker_cfg.port, creds, buffered=[d for d in creds if d in BUFFERED])
    pub.start()
    return pub


@contextmanager
def traffic(
    pub: FleetPublisher, *, seconds: float, rate: float, devices: Iterable[str] | None = None
) -> Iterator[threading.Event]:
    """Publish in the background for ``seconds`` (or until the yielded event is set); the block waits for the end
    of it on the way out."""
    stop = threading.Event()
    kwargs = {"seconds": seconds, "rate": rate, "stop": stop, "devices": devices}
    th = threading.Thread(target=pub.run, kwargs=kwargs, name="faults-traffic", daemon=True)
    th.start()
    try:
        yield stop
    except BaseException:
        stop.set()
        raise
    finally:
        th.join()


def watch(
    env: FaultEnv,
    obs: Observation,
    t0: float,
    seconds: float,
    *,
    ready: bool = False,
    metric: Callable[[dict[str, float]], bool] | None = None,
    alert: Callable[[list[dict[str, Any]]], bool] | None = None,
    pub: FleetPublisher | None = None,
    until_all: bool = True,
) -> None:
    """Poll the observers for up to ``seconds`` (or until every observer asked for has seen the fault)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        env.observe(obs, t0, ready=ready, metric=metric, alert=alert)
        done = (
            (not ready or obs.ready is not None)
            and (metric is None or obs.metrics is not None)
            and (alert is None or obs.alerts is not None)
        )
        if done and until_all:
            return
        if pub is not None:
            pub.serve_commands()
        time.sleep(0.2)


def settle(env: FaultEnv, pub: FleetPublisher, timeout: float, complete: Iterable[str] | None = None) -> None:
    """Answer commands until every device in ``complete`` (default: all) has stored everything PUBACKed, then
    until the store stops changing for 2 s (unrecoverable losses stay missing), or ``timeout``."""
    expected = list(complete) if complete is not None else list(pub.devices)
    pub.flush(min(timeout, 30))
    deadline = time.monotonic() + timeout
    last: tuple[int, ...] = ()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        pub.serve_commands()
        if all(pub.acked(d) <= env.stored(d)[0] for d in expected):
            counts = tuple(len(env.stored(d)[0]) for d in pub.devices)
            if counts != last:
                last, stable_since = counts, time.monotonic()
            elif time.monotonic() - stable_since > 2.0:
                return
        time.sleep(0.2)


def count(env: FaultEnv, pub: FleetPublisher) -> Counts:
    c = Counts()
    for d, dev in pub.devices.items():
        acked = pub.acked(d)
        stored, dups = env.stored(d)
        lost = len(acked - stored)
        c.sent += dev.sent
        c.acked += len(acked)
        c.stored += len(stored & set(range(1, dev.seq + 1)))
        c.duplicated += dups
        c.per_device_lost[d] = lost
        if dev.buffered:
            c.lost_buffered += lost
        else:
            c.lost_unbuffered += lost
    return c


def common_checks(res: Result, *, buffered_only: bool = False) -> None:
    """Nothing PUBACKed lost (of buffered devices only, when ``buffered_only``), nothing stored twice."""
    c = res.counts
    if buffered_only:
        res.check("0 lost of buffered devices", c.lost_buffered == 0, f"{c.lost_buffered} lost")
    else:
        res.check("0 lost", c.lost == 0, f"{c.lost} lost")
    res.check("0 duplicated", c.duplicated == 0, f"{c.duplicated} duplicated")


def loss_accounted(res: Result, env: FaultEnv, *, require_loss: bool = True) -> None:
    """Without a buffer, what cannot be recovered is counted per device and raises a data-quality alert naming the
    device (issue 8, part 3). ``require_loss``: the fault must have lost something, else it proved nothing."""
    lossy = sorted(d for d, n in res.counts.per_device_lost.items() if n and d in UNBUFFERED)
    if require_loss:
        res.check("the fault lost data of unbuffered devices (else it proved nothing)", bool(lossy))
    counted = metric_sum_any(env.metrics(), UNRECOVERED_METRIC)
    res.check(
        "unrecoverable loss counted in /metrics",
        counted >= res.counts.lost_unbuffered and (counted > 0 or not lossy),
        f"metric {counted:g} vs {res.counts.lost_unbuffered} lost",
    )
    alerted = {a.get("device_id") for a in env.alerts() if DATA_QUALITY_ALERT.search(alert_text(a))}
    missing = [d for d in lossy if d not in alerted]
    res.check("a data-quality alert names every device with a loss", not missing, f"none: {missing}")


# What the observers look for. The names of metrics and alerts added by the fixes of issue 8 are matched loosely
# (one place to adjust): unrecoverable loss, broker drops, stalls and store outages.
UNRECOVERED_METRIC = r"^lianfang_ingest_seq_lost_total\b"
BROKER_DROP_METRIC = r"^lianfang_broker_dropped_messages_total\b"
STALL_METRIC = r"^lianfang_ingest_stalled\b"
DATA_QUALITY_ALERT = re.compile(r"(?i)(data.?quality|unrecover|lost|gap|missing)")
BROKER_DROP_ALERT = re.compile(r"(?i)(drop|overflow|queue)")
STALL_ALERT = re.compile(r"(?i)(stall|store unavailable|store_unavailable|ingest)")


def metric_values(metrics: dict[str, float], name: str) -> list[float]:
    """Every series of one metric, whatever its labels (serve relays ingest's metrics with ``ingest="<id>"``)."""
    return [v for k, v in metrics.items() if k.split("{")[0] == name]


def metric_sum_any(metrics: dict[str, float], pattern: str) -> float:
    rx = re.compile(pattern)
    return sum(v for k, v in metrics.items() if rx.search(k) and not k.split("{")[0].endswith(("_created",)))


def is_platform_alert(a: dict[str, Any]) -> bool:
    """The platform's own alerts (ingest stalled, store unavailable, broker drops) name no device of the fleet."""
    return str(a.get("rule_id", "")).startswith("platform.") or a.get("device_id") in (None, "", "platform")


def alert_text(a: dict[str, Any]) -> str:
    return f"{a.get('rule_id')} {a.get('title_en')} {a.get('title_zh')} {a.get('detail')}"


__all__ = ["ALL_DEVICES", "BUFFERED", "NA", "POISON", "UNBUFFERED", "Ctx", "Result"]
