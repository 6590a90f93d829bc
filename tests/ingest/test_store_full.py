"""A full disk under the telemetry store (issue 8, part 2 and the fault suite's ``store_full``).

The store on a 2 MiB tmpfs, filled by another file while a batch of 2,000 messages waits to be written, then
freed: the writer must recover and store everything, using only the space the data needs. A single transaction
of the whole held batch needs more log space than the disk has (each insert dirties index pages all over the
B-tree), so a write that keeps failing for lack of space is split into smaller transactions, and the WAL is
truncated before each retry.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.protocol import DeviceInfo, decode
from core.store.sqlite import SqliteStore
from ingest.dedup import SeqTracker
from ingest.pipeline import RawMessage, build_batch
from ingest.writer import BatchWriter
from tests.helpers import wait_until

DEVICES = {f"meter-{i:04d}": DeviceInfo(f"meter-{i:04d}", "energy_meter", "r1") for i in range(8)}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "store"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> None:
    chunk = b"\0" * 65536
    with path.open("wb") as f:
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    with contextlib.suppress(OSError):
        os.sync()


def _messages(n: int, start: int) -> list[RawMessage]:
    now = time.time_ns() // 1_000_000
    out = []
    for i in range(start, start + n):
        device = f"meter-{i % 8:04d}"
        doc = {"ts": now - 100_000 + i, "seq": i // 8, "energy_kwh": 1000 + i * 0.01, "power_kw": 3.2, "voltage_v": 220}
        out.append(RawMessage(f"lf/v1/{device}/telemetry", json.dumps(doc).encode(), i % 65535 + 1, 1, now))
    return out


def test_a_full_disk_held_batch_is_written_once_space_is_freed(small_disk: Path) -> None:
    store = SqliteStore(small_disk / "telemetry.db")
    try:
        seqs = SeqTracker()
        writer = BatchWriter(store, seqs, decode, retry_backoff_s=(0.05, 0.2))
        first = _messages(200, 0)
        writer.write(first, DEVICES, build_batch(first, DEVICES, seqs))
        filler = small_disk / "filler"
        _fill(filler)
        held = _messages(2000, 200)
        batch = build_batch(held, DEVICES, seqs)
        done = threading.Event()

        def write() -> None:
            writer.write(held, DEVICES, batch)
            done.set()

        t = threading.Thread(target=write, daemon=True)
        t.start()
        wait_until(lambda: writer.store_error is not None, 30, what="the write failing for lack of space")
        assert "full" in str(writer.store_error)
        filler.unlink()
        wait_until(done.is_set, 60, 0.1, "the held batch written after the space was freed")
        t.join(5)
        assert store.count_readings() == 2200
        assert writer.isolated == 0 and seqs.staged_count() == 0
        assert writer.store_error is None
    finally:
        store.close()


def test_a_backlog_after_a_full_disk_does_not_fill_it_again_with_log(small_disk: Path) -> None:
    """The fault suite's case: once space is back, the held backlog is written as many small transactions while
    readers keep reading; the WAL must not grow over them into all the space (then its checkpoint has no room to
    copy into, and the store stays full for good)."""
    store = SqliteStore(small_disk / "telemetry.db")
    stop = threading.Event()
    try:
        seqs = SeqTracker()
        writer = BatchWriter(store, seqs, decode, retry_backoff_s=(0.05, 0.2))
        filler = small_disk / "filler"
        _fill(filler)
        batches = [_messages(8, 8 * i) for i in range(300)]
        done = threading.Event()

        def write_backlog() -> None:
            for msgs in batches:
                writer.write(msgs, DEVICES, build_batch(msgs, DEVICES, seqs))
            done.set()

        def read() -> None:  # the API and probes read all the time
            while not stop.is_set():
                store.count_readings()

        threads = [threading.Thread(target=f, daemon=True) for f in (write_backlog, read, read)]
        for t in threads:
            t.start()
        wait_until(lambda: writer.store_error is not None, 30, what="the disk full")
        filler.unlink()
        wait_until(done.is_set, 90, 0.1, "the backlog written")
        assert store.count_readings() == 2400 and writer.isolated == 0
    finally:
        stop.set()
        store.close()
