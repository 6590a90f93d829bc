"""Ingest SIGKILL: ``lianfang serve`` killed mid-stream and started again; the broker redelivers what was unacked."""

from __future__ import annotations

import signal
import time

from faults.env import fault_env
from faults.scenarios import NA, Ctx, Result, common_checks, count, fleet, settle, traffic

NAME = "ingest_sigkill"
EXPECT = "0 lost, 0 duplicated (every device)"


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT, ready=NA, metrics=NA, alerts=NA)  # the observed process itself is dead
    seconds = ctx.pick(4, 20)
    with fault_env(ctx.template, ctx.root, serve_env=ctx.serve_env(), broker_overrides=ctx.broker_overrides()) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env)
        try:
            with traffic(pub, seconds=seconds, rate=ctx.pick(50, 200)):
                time.sleep(seconds / 3)
                env.stop_serve(signal.SIGKILL)
                time.sleep(0.5)
                env.start_serve()
            settle(env, pub, ctx.pick(20, 90))
            res.counts = count(env, pub)
        finally:
            pub.close()
    common_checks(res)
    return res
