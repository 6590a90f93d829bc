"""Garbage-collector policy of the long-running service: long-lived objects out of the full collections.

The service holds tens of thousands of long-lived objects (a rule state per rule and device, the registry view,
sequence trackers). CPython's full collection walks all of them, and it runs every few seconds under ingest's
load: 20-90 ms each on the 2-core machine, during which every thread of the process stops — the largest single
cause of the alert-latency tail (docs/performance.md). ``settle()`` collects once and then moves every surviving
object to the permanent generation (``gc.freeze()``), so later full collections only walk what was created since.

It runs at start-up and then periodically (``Runtime``), so states created on the stream join the frozen set.
The cost of freezing: a reference cycle among frozen objects that later becomes garbage is not reclaimed. The
service's long-lived objects are freed by reference counting, not by the cycle collector; the number of frozen
objects is exported (``lianfang_gc_frozen_objects``) so a leak would show as a line that never stops rising.
"""

from __future__ import annotations

import gc
import logging
import time

from prometheus_client import Gauge

logger = logging.getLogger(__name__)

# Generation-1 collections between two full collections (CPython's default: 10). After ``gc.freeze()`` CPython's own
# brake on full collections (only when the survivors pending since the last one exceed 25 % of the long-lived
# total) no longer holds: the total counts only the unfrozen survivors, so every 10th generation-1 collection was a
# full one, 33 in the 3 minutes of bench/correlate.py (p50 48 ms, up to 142 ms, every thread stopped). With 100:
# 4 (and the periodic ``settle`` still collects fully every ``gc_settle_s``). docs/performance.md, "Correlation".
FULL_AFTER_GEN1 = 100

FROZEN = Gauge("lianfang_gc_frozen_objects", "Objects in the permanent GC generation (gc.freeze)")


def settle(reason: str) -> int:
    """Collect, then freeze what survived; full collections after ``FULL_AFTER_GEN1`` generation-1 ones from now
    on. Returns how many objects are frozen in all."""
    started = time.perf_counter()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, FULL_AFTER_GEN1)
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    FROZEN.set(frozen)
    logger.info("gc settled (%s): %d objects frozen, %.0f ms", reason, frozen, (time.perf_counter() - started) * 1000)
    return frozen
