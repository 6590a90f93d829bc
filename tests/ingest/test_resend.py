"""Resend bookkeeping (ingest/resend.py): pure GapBook tests, properties over random losses, the batch listener."""

from __future__ import annotations

import itertools
import json
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.types import Alert
from core.protocol import Event, Reading, Rejection
from core.settings import IngestSettings, ResendSettings, Settings, StoreSettings
from core.store import WriteBatch
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from ingest.resend import (
    MAX_RANGE,
    GapBook,
    Loss,
    ResendCommand,
    ResendManager,
    ResendPolicy,
    format_seq_ranges,
    parse_seq_ranges,
)
from lianfang.runtime import Runtime
from tests.conftest import Broker
from tests.helpers import wait_until
from tests.ingest.conftest import mqtt_settings, seed_registry

POLICY = ResendPolicy(settle_ms=1_000, answer_timeout_ms=10_000, max_attempts=3, commands_per_s=1_000, burst=1_000)


def _ids() -> object:
    counter = itertools.count(1)
    return lambda: f"cmd-{next(counter)}"


def book(policy: ResendPolicy = POLICY) -> GapBook:
    return GapBook(policy, new_id=_ids())  # type: ignore[arg-type]


def covered(losses: list[Loss]) -> set[int]:
    return {s for loss in losses for s in range(loss.from_seq, loss.to_seq + 1)}


# --- ranges text ------------------------------------------------------------------------------------------------


def test_format_seq_ranges_compacts_runs() -> None:
    assert format_seq_ranges([9, 1, 2, 3, 7, 10, 2]) == "1-3,7,9-10"
    assert format_seq_ranges([]) == ""


@given(st.sets(st.integers(0, 5_000), max_size=200))
def test_seq_ranges_round_trip(seqs: set[int]) -> None:
    parsed = parse_seq_ranges(format_seq_ranges(seqs), limit=10**6)
    assert {s for a, b in parsed for s in range(a, b + 1)} == seqs


@pytest.mark.parametrize("text", ["x", "3-1", "1-", "-1", "1-2-3", "1;2"])
def test_parse_seq_ranges_stops_at_garbage_and_never_raises(text: str) -> None:
    assert parse_seq_ranges(text) == []
    assert parse_seq_ranges("5," + text) == [(5, 5)]


def test_parse_seq_ranges_caps_what_it_believes() -> None:
    assert parse_seq_ranges("0-99999999") == []
    assert parse_seq_ranges("1-10,20-30", limit=12) == [(1, 10)]


# --- the book ---------------------------------------------------------------------------------------------------


def test_gap_is_asked_after_settle_and_filled_by_the_resent_records() -> None:
    b = book()
    for s in (1, 2, 3, 8):
        assert b.observe("m-1", s, 0) == []
    assert b.missing("m-1") == [(4, 7)]
    assert b.tick(500) == ([], [])  # not settled yet: may still arrive out of order
    (cmd,), losses = b.tick(1_000)
    assert losses == []
    assert (cmd.device_id, cmd.from_seq, cmd.to_seq, cmd.attempt) == ("m-1", 4, 7, 1)
    doc = json.loads(cmd.payload())
    assert doc == {"cmd_id": cmd.cmd_id, "name": "resend", "args": {"from_seq": 4, "to_seq": 7}, "expires_at": 11_000}
    assert cmd.topic == "lf/v1/m-1/cmd"
    for s in (4, 5, 6, 7):
        b.observe("m-1", s, 1_100)
    assert b.answer("m-1", cmd.cmd_id, True, "", 1_200) == []
    assert b.tick(5_000) == ([], [])
    assert b.missing("m-1") == [] and b.requests == {} and b.recovered == 4
    assert b.device_report()["m-1"]["lost"] == 0


def test_out_of_order_arrival_within_settle_sends_nothing() -> None:
    b = book()
    for s in (1, 3, 2, 5, 4):
        b.observe("m-1", s, 0)
    assert b.tick(10_000) == ([], [])
    assert b.sent == 0


def test_tail_loss_is_found_with_the_next_seq() -> None:
    b = book()
    for s in range(10):
        b.observe("m-1", s, 0)
    assert b.tick(60_000) == ([], [])  # 10..14 lost at the tail: nobody can know yet
    b.observe("m-1", 15, 60_000)
    (cmd,), _ = b.tick(61_000)
    assert (cmd.from_seq, cmd.to_seq) == (10, 14)


def test_answer_lists_seqs_no_longer_held_and_the_rest_comes_back() -> None:
    b = book()
    b.observe("m-1", 0, 0)
    b.observe("m-1", 101, 0)
    (cmd,), _ = b.tick(1_000)
    for s in range(51, 101):
        b.observe("m-1", s, 1_100)
    losses = b.answer("m-1", cmd.cmd_id, True, "1-50", 1_200)
    assert losses == [Loss("m-1", 1, 50, "not_held", 1_200)]
    assert b.tick(3_000) == ([], [])
    assert b.device_report()["m-1"] == {
        "missing": 0,
        "open_requests": 0,
        "recovered": 50,
        "lost": 50,
        "late": 0,
        "lost_ranges": ["1-50"],
    }


def test_records_missing_after_an_ok_answer_are_asked_again_then_not_received() -> None:
    """Resent, then dropped again on the way (an overflowing broker queue): asked again, max_attempts in all."""
    b = book()
    b.observe("m-1", 0, 0)
    b.observe("m-1", 5, 0)
    (cmd,), _ = b.tick(1_000)
    b.observe("m-1", 1, 1_100)
    b.observe("m-1", 3, 1_100)
    assert b.answer("m-1", cmd.cmd_id, True, "", 1_200) == []
    assert b.tick(2_100) == ([], [])  # within settle after the answer: the records may still be on their way
    again, losses = b.tick(2_200)
    assert losses == [] and [(c.from_seq, c.to_seq, c.attempt) for c in again] == [(2, 2, 2), (4, 4, 2)]
    b.observe("m-1", 2, 2_300)
    for c in again:
        b.answer("m-1", c.cmd_id, True, "", 2_400)
    assert len(b.requests) == 1  # the request whose record came back is closed at its answer
    (last,), _ = b.tick(3_400)
    assert (last.from_seq, last.attempt) == (4, 3)
    b.answer("m-1", last.cmd_id, True, "", 3_500)
    _, losses = b.tick(4_500)
    assert losses == [Loss("m-1", 4, 4, "not_received", 4_500)]


def test_outstanding_seqs_are_bounded_across_devices() -> None:
    b = book(ResendPolicy(settle_ms=0, max_outstanding_seqs=2_500, commands_per_s=1_000, burst=1_000))
    for i in range(5):
        b.observe(f"d-{i}", 0, 0)
        b.observe(f"d-{i}", 1_001, 0)
    first, _ = b.tick(0)
    assert len(first) == 2  # 2 x 1000 seqs asked; a third would pass 2,500
    for c in first:
        for s in range(c.from_seq, c.to_seq + 1):
            b.observe(c.device_id, s, 10)
        b.answer(c.device_id, c.cmd_id, True, "", 10)
    assert len(b.tick(20)[0]) == 2


def test_no_buffer_answer_loses_the_range_and_later_gaps_without_asking() -> None:
    b = book()
    b.observe("g-1", 0, 0)
    b.observe("g-1", 11, 0)
    (cmd,), _ = b.tick(1_000)
    assert b.answer("g-1", cmd.cmd_id, False, "no buffer", 1_100) == [Loss("g-1", 1, 10, "no_buffer", 1_100)]
    b.observe("g-1", 20, 2_000)
    commands, losses = b.tick(3_000)
    assert commands == [] and losses == [Loss("g-1", 12, 19, "no_buffer", 3_000)]
    assert b.sent == 1


def test_unanswered_gap_is_asked_max_attempts_times_then_lost() -> None:
    b = book()
    b.observe("c-1", 0, 0)
    b.observe("c-1", 4, 0)
    now, attempts = 1_000, []
    while True:
        commands, losses = b.tick(now)
        attempts += [c.attempt for c in commands]
        if losses:
            break
        now += 1_000
        assert now < 100_000
    assert attempts == [1, 2, 3]
    assert losses == [Loss("c-1", 1, 3, "no_answer", now)]
    assert b.requests == {} and b.missing("c-1") == []


def test_a_late_answer_or_a_foreign_one_is_ignored() -> None:
    b = book()
    b.observe("c-1", 0, 0)
    b.observe("c-1", 4, 0)
    (cmd,), _ = b.tick(1_000)
    assert b.answer("c-2", cmd.cmd_id, False, "", 1_100) == []  # another device cannot answer for it
    assert b.answer("c-1", "not-a-command", False, "", 1_100) == []
    assert b.missing("c-1") == [(1, 3)]


def test_large_gap_is_asked_in_ranges_of_at_most_10000() -> None:
    b = book()
    b.observe("m-1", 0, 0)
    b.observe("m-1", 25_001, 0)
    seen: list[tuple[int, int]] = []
    now = 1_000
    while b.missing("m-1"):
        commands, losses = b.tick(now)
        assert losses == []
        for c in commands:
            assert c.to_seq - c.from_seq + 1 <= MAX_RANGE
            seen.append((c.from_seq, c.to_seq))
            for s in range(c.from_seq, c.to_seq + 1):
                b.observe("m-1", s, now)
            b.answer("m-1", c.cmd_id, True, "", now)
        now += 1_000
    assert seen == [(1, 10_000), (10_001, 20_000), (20_001, 25_000)]


def test_gap_larger_than_max_gap_is_lost_at_once() -> None:
    b = book(ResendPolicy(max_gap=1_000))
    b.observe("m-1", 0, 0)
    assert b.observe("m-1", 5_000, 0) == [Loss("m-1", 1, 4_999, "too_large", 0)]
    assert b.missing("m-1") == []


def test_gaps_per_device_are_bounded() -> None:
    b = book(ResendPolicy(max_gaps=3))
    losses: list[Loss] = []
    for s in range(0, 12, 2):  # every other record lost: 1, 3, 5, 7, 9
        losses += b.observe("m-1", s, 0)
    assert b.missing("m-1") == [(1, 1), (3, 3), (5, 5)]
    assert losses == [Loss("m-1", 7, 7, "too_many_gaps", 0), Loss("m-1", 9, 9, "too_many_gaps", 0)]


def test_commands_are_rate_limited_across_devices() -> None:
    b = book(ResendPolicy(settle_ms=0, commands_per_s=10, burst=5))
    for i in range(20):
        b.observe(f"d-{i:03d}", 0, 0)
        b.observe(f"d-{i:03d}", 2, 0)
    assert len(b.tick(0)[0]) == 5
    assert len(b.tick(100)[0]) == 1  # 0.1 s at 10/s
    assert len(b.tick(1_100)[0]) == 5  # the burst again, no more
    assert b.sent == 11


def test_open_requests_per_device_are_bounded() -> None:
    b = book(ResendPolicy(settle_ms=0, max_open_requests=2))
    b.observe("m-1", 0, 0)
    for s in range(2, 20, 2):
        b.observe("m-1", s, 0)
    assert len(b.tick(0)[0]) == 2


def test_counter_restart_is_not_a_flood_of_gaps() -> None:
    b = book(ResendPolicy(settle_ms=0, restart_window=100))
    b.observe("m-1", 1_000, 0)
    b.observe("m-1", 1_010, 0)
    losses = b.observe("m-1", 0, 0)  # rebooted: counts from 0 again
    assert losses == [Loss("m-1", 1_001, 1_009, "counter_restart", 0)]
    for s in range(1, 50):
        assert b.observe("m-1", s, 0) == []
    assert b.tick(1_000) == ([], [])


def test_a_record_arriving_after_its_loss_was_counted_is_late_not_a_restart() -> None:
    b = book(ResendPolicy(settle_ms=0, restart_window=10, answer_timeout_ms=1, max_attempts=1))
    b.observe("m-1", 0, 0)
    b.observe("m-1", 100, 0)
    b.tick(0)
    _, losses = b.tick(10)
    assert covered(losses) == set(range(1, 100))
    b.observe("m-1", 5, 20)
    assert b.device_report()["m-1"]["late"] == 1
    b.observe("m-1", 101, 30)
    assert b.missing("m-1") == []


def test_policy_bounds() -> None:
    with pytest.raises(ValueError, match="max_range"):
        ResendPolicy(max_range=10_001)
    with pytest.raises(ValueError):
        ResendPolicy(max_attempts=0)


# --- properties -------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 400),
    drops=st.sets(st.integers(0, 398), max_size=200),
    buffer=st.integers(0, 400),
    seed=st.integers(0, 2**16),
    chunk=st.integers(1, 40),
)
def test_property_a_buffered_device_gets_back_exactly_what_it_still_holds(
    n: int, drops: set[int], buffer: int, seed: int, chunk: int
) -> None:
    """Any loss pattern (the last seq arrives, as a next message would), any arrival order within a delivery, a
    device holding its last ``buffer`` records: every seq ends exactly once as received or lost (not_held),
    commands ask only for missing seqs, in ranges of at most 10,000."""
    rng = random.Random(seed)
    drops = {d for d in drops if 0 < d < n - 1}  # the first seq is known (warmed from the store), the last arrives
    b = book(ResendPolicy(settle_ms=1_000, answer_timeout_ms=5_000, max_range=7, commands_per_s=5, burst=3))
    b.warm("m-1", 0)
    held = set(range(max(0, n - buffer), n))
    received: list[int] = []
    lost: list[Loss] = []
    now = 0
    stream = [s for s in range(n) if s not in drops]

    def device_answers(cmds: list[ResendCommand]) -> None:
        nonlocal lost
        for c in cmds:
            asked = set(range(c.from_seq, c.to_seq + 1))
            assert c.to_seq - c.from_seq + 1 <= 7
            assert not asked & set(received), "asked for a seq already received"
            for s in sorted(asked & held):
                lost += b.observe("m-1", s, now)
                received.append(s)
            lost += b.answer("m-1", c.cmd_id, True, format_seq_ranges(asked - held), now)

    for i in range(0, len(stream), chunk):
        part = stream[i : i + chunk]
        rng.shuffle(part)
        for s in part:
            lost += b.observe("m-1", s, now)
            received.append(s)
        now += 200
        cmds, losses = b.tick(now)
        lost += losses
        device_answers(cmds)
    for _ in range(10_000):
        cmds, losses = b.tick(now)
        lost += losses
        device_answers(cmds)
        if not b.requests and not b.missing("m-1"):
            break
        now += 500
    assert sorted(received) == sorted(set(received)), "a seq delivered twice"
    assert set(received) | covered(lost) == set(range(n))
    assert not set(received) & covered(lost)
    assert covered(lost) == drops - held
    assert {x.reason for x in lost} <= {"not_held"}


@settings(max_examples=40, deadline=None)
@given(drops=st.sets(st.integers(1, 98), min_size=1, max_size=60), answer=st.sampled_from(["none", "no_buffer"]))
def test_property_unrecoverable_losses_are_counted_exactly(drops: set[int], answer: str) -> None:
    b = book(ResendPolicy(settle_ms=0, answer_timeout_ms=1_000, max_attempts=2))
    lost: list[Loss] = []
    for s in range(100):
        if s not in drops:
            lost += b.observe("g-1", s, 0)
    now = 0
    while b.requests or b.missing("g-1"):
        cmds, losses = b.tick(now)
        lost += losses
        for c in cmds:
            if answer == "no_buffer":
                lost += b.answer("g-1", c.cmd_id, False, "", now)
        now += 500
        assert now < 1_000_000
    assert covered(lost) == drops
    assert sum(x.count for x in lost) == len(drops)
    assert {x.reason for x in lost} == {"no_answer" if answer == "none" else "no_buffer"}


# --- the batch listener -----------------------------------------------------------------------------------------


def _reading(device: str, seq: int) -> Reading:
    return Reading(device, "gd", "energy_meter", 1_000 + seq, seq, {"energy_kwh": float(seq)})


def test_manager_feeds_the_book_from_batches_and_consumes_cmd_results() -> None:
    sent: list[ResendCommand] = []
    lost: list[tuple[Loss, str, str]] = []
    now = [0]
    mgr = ResendManager(
        ResendPolicy(settle_ms=0),
        send=lambda c: sent.append(c) is None,
        on_loss=lambda loss, region, typ: lost.append((loss, region, typ)),
        clock_ms=lambda: now[0],
        new_id=_ids(),  # type: ignore[arg-type]
    )
    mgr.warm([("m-1", 4, 0), ("m-1", 2, 0)])
    batch = WriteBatch(readings=[_reading("m-1", 5), _reading("m-1", 9)])
    # A rejected message still carries its seq: it is not missing (it was rejected, with a reason).
    bad = json.dumps({"seq": 7, "energy_kwh": "x"}).encode()
    batch.rejections.append(Rejection("m-1", "lf/v1/m-1/telemetry", "schema", "energy_kwh", bad, 0))
    mgr.on_batch(batch)
    assert mgr.book.missing("m-1") == [(6, 6), (8, 8)]
    now[0] = 10
    assert [(c.from_seq, c.to_seq) for c in mgr.tick()] == [(6, 6), (8, 8)]
    answers = [
        Event("m-1", "gd", "energy_meter", 20, None, "cmd_result", {"cmd_id": c.cmd_id, "ok": True, "detail": d})
        for c, d in zip(sent, ["", "8"], strict=True)
    ]
    mgr.on_batch(WriteBatch(readings=[_reading("m-1", 6)], events=answers))
    assert [(x.from_seq, x.to_seq, x.reason, r, t) for x, r, t in lost] == [(8, 8, "not_held", "gd", "energy_meter")]
    st = mgr.status()
    assert (st["missing"], st["lost"], st["recovered"], st["commands_sent"]) == (0, 1, 1, 2)
    assert st["devices"]["m-1"]["lost_ranges"] == ["8"]


def test_manager_alerts_a_device_at_most_once_per_interval_merging_its_losses() -> None:
    lost: list[Loss] = []
    now = [0]
    mgr = ResendManager(
        ResendPolicy(settle_ms=0, no_buffer_backoff_ms=10**9),
        send=lambda c: True,
        on_loss=lambda loss, *_: lost.append(loss),
        alert_interval_s=60,
        clock_ms=lambda: now[0],
        new_id=_ids(),  # type: ignore[arg-type]
    )
    mgr.on_batch(WriteBatch(readings=[_reading("g-1", 0), _reading("g-1", 5)]))
    (cmd,) = mgr.tick()
    answer = {"cmd_id": cmd.cmd_id, "ok": False, "detail": "no buffer"}
    mgr.on_batch(WriteBatch(events=[Event("g-1", "gd", "gate", 1, None, "cmd_result", answer)]))
    assert [(x.from_seq, x.to_seq, x.count) for x in lost] == [(1, 4, 4)]  # the first loss: at once
    for s, t in ((10, 1_000), (20, 2_000), (30, 3_000)):  # then more losses, every second
        now[0] = t
        mgr.on_batch(WriteBatch(readings=[_reading("g-1", s)]))
        mgr.tick()
    assert len(lost) == 1
    now[0] = 60_000
    mgr.tick()
    assert [(x.from_seq, x.to_seq, x.count, x.reason) for x in lost[1:]] == [(6, 29, 22, "no_buffer")]
    assert mgr.status()["lost"] == 26


def test_manager_never_raises_into_ingest() -> None:
    mgr = ResendManager(send=lambda c: True, on_loss=lambda *_: 1 / 0)  # type: ignore[arg-type,return-value]
    mgr.on_batch(WriteBatch(readings=[_reading("m-1", 0), _reading("m-1", 200_000)]))  # too_large -> on_loss fails
    assert mgr.status()["lost"] == 199_999


# --- end to end: broker SIGKILL under a backlog (issue 8.3) ----------------------------------------------------


@pytest.fixture
def crash_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with the project's generated config, saving its persistence file only when told (SIGUSR1), so
    that a SIGKILL loses exactly what arrived after the save, whatever the default autosave settings are."""
    cfg = BrokerConfig(
        directory=tmp_path / "mosquitto",
        port=free_port(),
        admin_password="test-admin-" + uuid.uuid4().hex,
        platform_password="test-platform-" + uuid.uuid4().hex,
        sim_password="test-sim-" + uuid.uuid4().hex,
        autosave_interval_s=3600,
        autosave_on_changes=False,
    )
    proc = MosquittoProcess(cfg)
    proc.start()
    yield Broker(cfg.port, cfg.directory, cfg.admin_password, cfg.platform_username, cfg.platform_password, "", proc)
    proc.stop()


def _stored(path: Path, device: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq", (device,))]


POWER_CUT_SEQ = 2_500  # car-0001's record at this seq is a power_cut event (rule V12.power_cut)


def _records(device: str, seqs: range, body: dict[str, object]) -> list[SimMessage]:
    base = int(time.time() * 1000) - 600_000
    out = []
    for s in seqs:
        kind, doc = "telemetry", {"ts": base + s, "seq": s, **body}
        if device == "car-0001" and s == POWER_CUT_SEQ:
            kind, doc = "event", {"ts": base + s, "seq": s, "type": "power_cut"}
        out.append(SimMessage(device, kind, json.dumps(doc).encode(), base + s, s))
    return out


def _stored_events(path: Path, device: str) -> list[int]:
    sql = "SELECT seq FROM events WHERE device_id = ? AND seq IS NOT NULL ORDER BY seq"
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(sql, (device,))]


BUFFERED = {
    "meter-0001": {"energy_kwh": 1.5},
    "meter-0002": {"energy_kwh": 2.5},
    "car-0001": {"lat": 23.13, "lon": 113.27},
}
UNBUFFERED = {"gate-0001": {"door_open": False}}


@pytest.mark.slow
@pytest.mark.integration
def test_broker_sigkill_under_a_backlog_loses_nothing_of_devices_with_a_buffer(
    crash_broker: Broker, sqlite_registry: Registry, tmp_path: Path
) -> None:
    broker, n_saved, n = crash_broker, 1_000, 3_000
    seed_registry(sqlite_registry)
    settings = Settings(
        data_dir=tmp_path,
        database_url=str(sqlite_registry.engine.url),
        store=StoreSettings(sqlite_path=tmp_path / "telemetry.db"),
        mqtt=mqtt_settings(broker),
        ingest=IngestSettings(batch_wait_ms=5, registry_refresh_s=60),
        resend=ResendSettings(settle_s=0.5, answer_timeout_s=3, max_attempts=2),
        gc_settle_s=0,
    )
    # Ingest's persistent session exists, then ingest is down: the backlog waits in the broker.
    first = Runtime(settings)
    first.start()
    first.stop()
    sim = broker.process.cfg.sim_password or ""
    buffered = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", sim, client_id="sim-buf", reconnect_min_s=1)
    bare = SharedPublisher(
        "127.0.0.1", broker.port, "lianfang-sim", sim, client_id="sim-bare", reconnect_min_s=1, resend_buffer=0
    )
    runtime: Runtime | None = None
    try:
        buffered.start()
        bare.start()
        db = broker.directory / "mosquitto.db"

        def publish(seqs: range) -> None:
            for pub, fleet in ((buffered, BUFFERED), (bare, UNBUFFERED)):
                for device, body in fleet.items():
                    for msg in _records(device, seqs, body):
                        pub.publish(msg)
            assert buffered.flush(30) and bare.flush(30), "not every message was PUBACKed"

        publish(range(n_saved))
        saved_before = db.stat().st_mtime_ns if db.exists() else 0
        assert broker.process.proc is not None
        broker.process.proc.send_signal(signal.SIGUSR1)  # mosquitto writes its persistence file now
        wait_until(lambda: db.exists() and db.stat().st_mtime_ns != saved_before, 10, what="the broker's save")
        publish(range(n_saved, n))  # PUBACKed, in the broker's memory only
        assert buffered.counts.acked == len(BUFFERED) * n and bare.counts.acked == n
        broker.process.stop(kill=True)
        broker.process.start()
        wait_until(lambda: buffered.counts.reconnects and bare.counts.reconnects, 30, what="devices reconnected")
        publish(range(n, n + 1))  # each device's next record: the tail loss shows as a gap

        runtime = Runtime(settings)
        runtime.start()
        rt = runtime
        for device in BUFFERED:
            done = n if device == "car-0001" else n + 1
            wait_until(lambda d=device, k=done: len(_stored(rt.store.path, d)) == k, 60, 0.1, f"{device} complete")
        for device in BUFFERED:
            seqs = sorted(_stored(rt.store.path, device) + _stored_events(rt.store.path, device))
            assert seqs == list(range(n + 1)), "each seq stored exactly once"

        def gate_alert() -> list[Alert]:
            assert rt.alerts is not None
            return [a for a in rt.alerts.service.open_alerts() if a.rule_id == "DQ1"]

        (alert,) = wait_until(gate_alert, 30, 0.1, "the data-quality alert of the device without buffer")
        stored = set(_stored(rt.store.path, "gate-0001"))
        lost = sorted(set(range(n + 1)) - stored)
        assert lost, "the broker SIGKILL lost nothing: the test proved nothing"
        assert lost == list(range(lost[0], lost[-1] + 1)) and lost[0] >= n_saved  # what arrived after the save
        assert alert.device_id == "gate-0001" and alert.region_id == "gd-gz-a01-b1"
        assert alert.detail["group"] == f"{lost[0]}-{lost[-1]}"
        # The recovered power_cut (lost with the broker, resent by the car) raised its alert, once.
        assert rt.alerts is not None
        (cut,) = [a for a in rt.alerts.service.open_alerts() if a.rule_id == "V12.power_cut"]
        assert cut.device_id == "car-0001" and cut.count == 1
        assert rt.resend is not None
        st = rt.resend.status()
        assert st["devices"]["gate-0001"]["lost"] == len(lost)
        assert st["devices"]["gate-0001"]["lost_ranges"] == [f"{lost[0]}-{lost[-1]}"]
        for device in BUFFERED:
            assert st["devices"][device]["lost"] == 0
            assert st["devices"][device]["recovered"] == len(lost), "the buffered devices lost as many"
        status = rt.ingest_status()
        assert status["resend"]["lost"] == len(lost)
    finally:
        if runtime is not None:
            runtime.stop()
        buffered.close()
        bare.close()
