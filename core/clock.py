"""The only place that reads the wall clock; pure code takes ``now`` instead."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
