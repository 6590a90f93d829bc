"""Broker SIGTERM under traffic: Mosquitto saves everything on the way down; ingest reconnects to the same session."""

from __future__ import annotations

import signal
import time

from faults.env import Observation, fault_env
from faults.scenarios import NA, Ctx, Result, common_checks, count, fleet, metric_values, settle, traffic, watch

NAME = "broker_sigterm"
EXPECT = "0 lost, 0 duplicated; the outage shows in /health/ready (503) and lianfang_ingest_broker_connected"


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT, alerts=NA)
    seconds = ctx.pick(5, 20)
    obs = Observation()
    with fault_env(ctx.template, ctx.root, serve_env=ctx.serve_env(), broker_overrides=ctx.broker_overrides()) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env)
        try:
            with traffic(pub, seconds=seconds, rate=ctx.pick(50, 200)):
                time.sleep(seconds / 3)
                t0 = time.monotonic()
                env.kill_broker(signal.SIGTERM)
                watch(
                    env,
                    obs,
                    t0,
                    ctx.pick(3, 5),
                    ready=True,
                    metric=lambda m: 0 in metric_values(m, "lianfang_ingest_broker_connected"),
                )
                env.start_broker()
            settle(env, pub, ctx.pick(20, 90))
            res.counts = count(env, pub)
        finally:
            pub.close()
    res.ready, res.metrics = obs.ready, obs.metrics
    common_checks(res)
    res.check("broker outage visible in /health/ready", obs.ready is not None)
    res.check("broker outage visible in /metrics", obs.metrics is not None)
    return res
