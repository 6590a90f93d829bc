"""Poison values from one device amid good traffic: out-of-bound seqs and integers, NaN / Infinity tokens, deep
nesting, huge arrays; then a broker restart (the redelivery after it must not turn good messages into
duplicates)."""

from __future__ import annotations

import json
import signal
import time

from faults.env import POISON, Observation, fault_env
from faults.scenarios import BUFFERED, UNBUFFERED, Ctx, Result, common_checks, count, fleet, settle, traffic, watch

NAME = "poison"
EXPECT = "good devices 0 lost, 0 duplicated; every poison message rejected with a reason; ready stays 200"


def poison_payloads(now_ms: int) -> list[tuple[str, bytes]]:
    """(channel, payload): each one is outside PROTOCOL.md v1.1 and must be rejected, never stored, never jam."""
    big = 2**63

    def j(obj: object) -> bytes:
        return json.dumps(obj).encode()

    depth = 20_000
    return [
        ("telemetry", j({"ts": now_ms, "seq": big + 5, "energy_kwh": 1.0})),
        ("telemetry", j({"ts": now_ms, "seq": 2**64 + 1, "energy_kwh": 1.0})),
        ("telemetry", j({"ts": now_ms, "seq": -1, "energy_kwh": 1.0})),
        ("telemetry", j({"ts": now_ms, "seq": 1.5, "energy_kwh": 1.0})),
        ("telemetry", j({"ts": now_ms, "seq": "12", "energy_kwh": 1.0})),
        ("telemetry", j({"ts": now_ms, "energy_kwh": big + 1})),
        ("telemetry", j({"ts": now_ms, "energy_kwh": -big - 1})),
        ("telemetry", j({"ts": now_ms, "energy_kwh": 1.0, "extra_count": big})),
        # beyond 2^64 a JSON parser may hand back a float: still an integer that does not fit 64 bits
        ("telemetry", j({"ts": now_ms, "energy_kwh": 2**70})),
        ("telemetry", j({"ts": now_ms, "energy_kwh": 1.0, "extra_count": 2**70})),
        ("telemetry", j({"ts": big + 1, "energy_kwh": 1.0})),
        ("telemetry", b'{"energy_kwh": NaN}'),
        ("telemetry", b'{"energy_kwh": Infinity}'),
        ("telemetry", b'{"energy_kwh": -Infinity}'),
        ("telemetry", b'{"energy_kwh": 1e999}'),
        ("telemetry", b'{"energy_kwh": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"),
        ("telemetry", b"[" + b",".join([b'{"energy_kwh": 1}'] * 3000) + b"]"),
        ("telemetry", j({"energy_kwh": 1, "x": [0] * 20_000})),
        ("event", j({"ts": now_ms, "type": "tamper", "code": 2**70})),
        ("event", j({"ts": now_ms, "type": "tamper", "seq": big + 9})),
    ]


def run(ctx: Ctx) -> Result:
    res = Result(NAME, EXPECT, alerts="n/a")
    obs = Observation()
    seconds = ctx.pick(4, 20)
    with fault_env(ctx.template, ctx.root, serve_env=ctx.serve_env(), broker_overrides=ctx.broker_overrides()) as env:
        env.start_broker()
        env.start_serve()
        pub = fleet(env, (*BUFFERED, *UNBUFFERED, POISON))
        good = [*BUFFERED, *UNBUFFERED]
        payloads = poison_payloads(int(time.time() * 1000))
        rounds = int(ctx.pick(2, 10))
        try:
            rejected_before = _rejected(env.metrics())
            with traffic(pub, seconds=seconds, rate=ctx.pick(50, 200), devices=good):
                time.sleep(0.5)
                t0 = time.monotonic()
                n_poison = rounds * len(payloads)

                def counted(m: dict[str, float]) -> bool:
                    return _rejected(m) > rejected_before

                def look(seconds: float) -> None:
                    watch(env, obs, t0, seconds, ready=True, metric=counted, until_all=False)

                for _round in range(rounds):
                    for channel, payload in payloads:
                        pub.publish_raw(POISON, payload, channel)
                    look(seconds / (rounds + 2))  # the observers run while the poison goes on
                look(seconds / (rounds + 2))
            env.kill_broker(signal.SIGTERM)  # graceful: what ingest held is redelivered to the same session
            env.start_broker()
            pub.run(seconds=2, rate=20, devices=good)
            settle(env, pub, ctx.pick(20, 90), complete=good)
            res.counts = count(env, pub)
            stored_poison = env.rows(POISON)
            rejections = env.rejections(POISON)
        finally:
            pub.close()
    res.ready = obs.ready if obs.ready is not None else "200 throughout"
    res.metrics = obs.metrics
    common_checks(res)
    res.check("ready stayed 200 under poison (no stall)", obs.ready is None, "503 seen")
    res.check("no poison value stored", not stored_poison, f"{stored_poison} telemetry/event rows stored")
    total = sum(rejections.values())
    res.check(
        "every poison message rejected with a reason",
        total >= n_poison,
        f"{total} rejections of {n_poison} ({', '.join(f'{k} {v}' for k, v in sorted(rejections.items()))})",
    )
    res.check("poison visible in /metrics (rejections counted)", obs.metrics is not None)
    return res


def _rejected(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("lianfang_ingest_messages_rejected_total{"))
