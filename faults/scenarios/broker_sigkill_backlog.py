"""Broker SIGKILL while it holds a backlog for the ingest session (ingest stopped), devices with and without a
resend buffer.

The broker runs the generated config with ``autosave_interval 3600`` (time-based), so the crash takes the whole
backlog since the start of the outage: the worst case of any autosave setting, and a certain loss for the suite to
recover. After the restart each device publishes a short tail, so that a loss at the end of its burst is found
from its next seq too.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from faults.env import Observation, fault_env
from faults.scenarios import (
    BUFFERED,
    DATA_QUALITY_ALERT,
    UNBUFFERED,
    Ctx,
    Result,
    alert_text,
    common_checks,
    count,
    fleet,
    loss_accounted,
    metric_values,
    settle,
    watch,
)

NAME = "broker_sigkill_backlog"
EXPECT = "0 lost of buffered devices (resend); unbuffered loss counted per device and alerted; 0 duplicated"


def run(ctx: Ctx) -> Result:
    overrides = ctx.broker_overrides(autosave_interval_s=3600, autosave_on_changes=False)
    return sigkill_with_backlog(ctx, Result(NAME, EXPECT, ready="n/a"), overrides, require_loss=True)


def sigkill_with_backlog(ctx: Ctx, res: Result, overrides: dict[str, Any], *, require_loss: bool) -> Result:
    obs = Observation()
    with fault_env(ctx.template, ctx.root, broker_overrides=overrides, serve_env=ctx.serve_env()) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env)
        try:
            pub.run(seconds=1, rate=20)  # a stored start: the platform knows every device's seq
            pub.flush(10)
            env.stop_serve()  # graceful: the session stays, the broker queues for it
            pub.run(seconds=ctx.pick(3, 15), rate=ctx.pick(50, 200))
            pub.flush(10)
            t0 = time.monotonic()
            env.kill_broker(signal.SIGKILL)
            env.start_broker()
            env.start_serve()
            pub.run(seconds=2, rate=10)  # the tail: each device's next seq shows what is missing
            watch(
                env,
                obs,
                t0,
                ctx.pick(10, 60) if require_loss else ctx.pick(5, 30),
                metric=lambda m: sum(metric_values(m, "lianfang_ingest_seq_gaps_total")) > 0,
                alert=lambda items: any(
                    a.get("device_id") in UNBUFFERED and DATA_QUALITY_ALERT.search(alert_text(a)) for a in items
                ),
                pub=pub,
            )
            settle(env, pub, ctx.pick(15, 90), complete=BUFFERED)
            res.counts = count(env, pub)
            loss_accounted(res, env, require_loss=require_loss)
        finally:
            pub.close()
    res.metrics, res.alerts = obs.metrics, obs.alerts
    common_checks(res, buffered_only=True)
    return res
