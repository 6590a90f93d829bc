"""Queue overflow: the broker's ``max_queued_messages`` is small and ingest is away, so Mosquitto drops messages
for the ingest session while the devices still get PUBACK success."""

from __future__ import annotations

import time

from faults.env import Observation, fault_env
from faults.scenarios import (
    BROKER_DROP_ALERT,
    BROKER_DROP_METRIC,
    BUFFERED,
    Ctx,
    Result,
    alert_text,
    common_checks,
    count,
    fleet,
    is_platform_alert,
    loss_accounted,
    metric_sum_any,
    settle,
    watch,
)

NAME = "queue_overflow"
EXPECT = "0 lost of buffered devices (resend); unbuffered loss counted and alerted; broker drops in metrics + alert"


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT, ready="n/a")
    obs = Observation()
    overrides = ctx.broker_overrides(max_queued_messages=int(ctx.pick(100, 500)))
    with fault_env(ctx.template, ctx.root, broker_overrides=overrides, serve_env=ctx.serve_env()) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env)
        try:
            pub.run(seconds=1, rate=20)
            pub.flush(10)
            env.stop_serve()  # the session stays; the broker queues for it, up to max_queued_messages
            t0 = time.monotonic()
            pub.run(seconds=ctx.pick(3, 15), rate=ctx.pick(50, 200))
            pub.flush(10)
            env.start_serve()
            pub.run(seconds=2, rate=10)  # the tail
            watch(
                env,
                obs,
                t0,
                ctx.pick(15, 60),
                metric=lambda m: metric_sum_any(m, BROKER_DROP_METRIC) > 0,
                alert=lambda items: any(
                    is_platform_alert(a) and BROKER_DROP_ALERT.search(alert_text(a)) for a in items
                ),
                pub=pub,
            )
            settle(env, pub, ctx.pick(15, 90), complete=BUFFERED)
            res.counts = count(env, pub)
            loss_accounted(res, env)
        finally:
            pub.close()
    res.metrics, res.alerts = obs.metrics, obs.alerts
    common_checks(res, buffered_only=True)
    res.check("broker drops in /metrics", obs.metrics is not None)
    res.check("broker drops alerted", obs.alerts is not None)
    return res
