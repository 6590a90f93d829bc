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

FROZEN = Gauge("lianfang_gc_frozen_objects", "Objects in the permanent GC generation (gc.freeze)")


def settle(reason: str) -> int:
    """Collect, then freeze what survived. Returns how many objects are frozen in all."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    FROZEN.set(frozen)
    logger.info("gc settled (%s): %d objects frozen, %.0f ms", reason, frozen, (time.perf_counter() - started) * 1000)
    return frozen
