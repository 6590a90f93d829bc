"""Is ingest stalled? Pure: the service takes a snapshot of its progress, ``assess`` says why it is not ready.

Ingest is stalled when the oldest message it holds unacknowledged is older than ``stall_after_s`` (a write, the
alert engine or the decoder is stuck somewhere), when the writer has spent that long on one batch (a store that
keeps failing, a lock held by another process), when the store's last write failed, or when one of its threads
has died. Each reason is one line for ``/health/ready``, the log and the platform alert.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    backlog: int  # messages received and not acknowledged
    oldest_ms: int | None  # receive time of the oldest of them (None: none held)
    writing_since_ms: int | None  # when the writer took the batch it is still on (None: idle)
    store_error: str | None  # the last write's StoreUnavailable, until a write succeeds again
    store_failing_since_ms: int | None
    threads_alive: bool


def assess(p: Progress, *, now_ms: int, stall_after_s: float) -> list[str]:
    """The reasons ingest is not making progress, empty when it is."""
    reasons: list[str] = []
    bound_ms = stall_after_s * 1000
    if not p.threads_alive:
        reasons.append("an ingest thread has died")
    if p.store_error is not None:
        since = (now_ms - p.store_failing_since_ms) / 1000 if p.store_failing_since_ms is not None else 0.0
        reasons.append(f"store unavailable for {since:.0f} s: {p.store_error}")
    if p.writing_since_ms is not None and now_ms - p.writing_since_ms > bound_ms:
        reasons.append(
            f"the writer has made no progress for {(now_ms - p.writing_since_ms) / 1000:.0f} s "
            f"with {p.backlog} messages pending"
        )
    if p.backlog and p.oldest_ms is not None and now_ms - p.oldest_ms > bound_ms:
        reasons.append(
            f"the oldest of {p.backlog} unacknowledged messages is {(now_ms - p.oldest_ms) / 1000:.0f} s old "
            f"(bound {stall_after_s:g} s)"
        )
    return reasons
