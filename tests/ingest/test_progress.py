"""ingest/stall.py: when is ingest stalled, and what does it say (pure: the snapshot and ``now`` come in)."""

from __future__ import annotations

from ingest.stall import Progress, assess

NOW = 1_780_000_000_000
IDLE = Progress(
    backlog=0, oldest_ms=None, writing_since_ms=None, store_error=None, store_failing_since_ms=None, threads_alive=True
)


def _with(**kw: object) -> Progress:
    values = {f: getattr(IDLE, f) for f in Progress.__slots__}  # type: ignore[attr-defined]
    values.update(kw)
    return Progress(**values)  # type: ignore[arg-type]


def test_idle_and_busy_but_moving_are_not_stalled() -> None:
    assert assess(IDLE, now_ms=NOW, stall_after_s=30) == []
    moving = _with(backlog=1800, oldest_ms=NOW - 900, writing_since_ms=NOW - 40)
    assert assess(moving, now_ms=NOW, stall_after_s=30) == []


def test_an_old_backlog_is_a_stall_with_its_count_and_age() -> None:
    (reason,) = assess(_with(backlog=1234, oldest_ms=NOW - 41_000), now_ms=NOW, stall_after_s=30)
    assert reason == "the oldest of 1234 unacknowledged messages is 41 s old (bound 30 s)"


def test_a_writer_on_one_batch_too_long_is_a_stall() -> None:
    reasons = assess(
        _with(backlog=10, oldest_ms=NOW - 1000, writing_since_ms=NOW - 31_000), now_ms=NOW, stall_after_s=30
    )
    assert reasons == ["the writer has made no progress for 31 s with 10 messages pending"]


def test_a_failing_store_and_a_dead_thread_are_reported_at_once() -> None:
    reasons = assess(
        _with(store_error="database is locked", store_failing_since_ms=NOW - 6000, threads_alive=False),
        now_ms=NOW,
        stall_after_s=30,
    )
    assert reasons == ["an ingest thread has died", "store unavailable for 6 s: database is locked"]
