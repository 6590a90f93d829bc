"""The store outage shared by ``store_full`` and ``store_locked``: traffic, the fault, the observers, recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults.env import FaultEnv, Observation, fault_env
from faults.scenarios import (
    STALL_ALERT,
    STALL_METRIC,
    Ctx,
    Result,
    alert_text,
    common_checks,
    count,
    fleet,
    is_platform_alert,
    metric_sum_any,
    metric_values,
    settle,
    traffic,
    watch,
)

ALERT_BOUND_S = 60.0  # issue 8: a built-in platform alert within 60 s


def _platform_alert(items: list[dict[str, Any]]) -> bool:
    return any(is_platform_alert(a) and STALL_ALERT.search(alert_text(a)) for a in items)


def _stall_metric(m: dict[str, float]) -> bool:
    """The held backlog shows: store errors counted (or a stall flagged) while messages wait unacknowledged."""
    held = sum(metric_values(m, "lianfang_ingest_unacked_messages")) > 0
    failing = sum(metric_values(m, "lianfang_ingest_store_errors_total")) > 0 or metric_sum_any(m, STALL_METRIC) > 0
    return held and failing


def store_outage(
    ctx: Ctx,
    res: Result,
    inject: Callable[[FaultEnv], None],
    release: Callable[[FaultEnv], None],
    *,
    store_dir: Path | None = None,
) -> None:
    obs = Observation()
    with fault_env(
        ctx.template,
        ctx.root,
        store_dir=store_dir,
        serve_env=ctx.serve_env(),
        broker_overrides=ctx.broker_overrides(),
    ) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env)
        try:
            outage = ctx.pick(10, 75)
            with traffic(pub, seconds=1 + outage + 2, rate=ctx.pick(20, 50)) as stop:
                time.sleep(1)
                inject(env)
                t0 = time.monotonic()
                watch(env, obs, t0, outage, ready=True, metric=_stall_metric, alert=_platform_alert)
                release(env)
                time.sleep(2)  # traffic goes on through the recovery, then stops: the store must hold only
                stop.set()  # what was sent, not minutes of it on a 2 MiB disk
            t1 = time.monotonic()
            recovered = _recovered(env, t1, ctx.pick(10, 90))
            settle(env, pub, ctx.pick(15, 90))
            res.counts = count(env, pub)
            files = sorted(env.store_path.parent.iterdir())
            sizes = ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in files if p.is_file())
        finally:
            pub.close()
    res.ready, res.metrics, res.alerts = obs.ready, obs.metrics, obs.alerts
    common_checks(res)
    res.check("503 from /health/ready while the store is out", obs.ready is not None)
    res.check("backlog and store errors in /metrics", obs.metrics is not None)
    res.check(
        f"platform alert within {ALERT_BOUND_S:g} s",
        obs.alerts is not None and obs.alerts <= ALERT_BOUND_S,
        "" if obs.alerts is not None else "none",
    )
    res.check("ready again after recovery", recovered["ready"], f"still 503; store dir: {sizes}")
    if obs.alerts is not None:
        res.check("platform alert resolved after recovery", recovered["resolved"], "still open")


def _recovered(env: FaultEnv, t1: float, timeout: float) -> dict[str, bool]:
    out = {"ready": False, "resolved": False}
    deadline = t1 + timeout
    while time.monotonic() < deadline:
        out["ready"] = out["ready"] or env.ready()[0] == 200
        out["resolved"] = out["resolved"] or not _platform_alert(env.alerts())
        if all(out.values()):
            break
        time.sleep(0.25)
    return out
