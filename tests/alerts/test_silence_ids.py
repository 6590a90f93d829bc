"""Silence ids stay unique when two processes create silences at once (issue 12: two ``lianfang serve`` behind a
balancer, each numbering silences from its own engine's counter), on SQLite and PostgreSQL; and the pure match
behind ``silenced_by`` (``silences_holding``)."""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.lifecycle import Silence, silences_holding
from alerts.repository import AlertRepository
from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from alerts.types import Alert, AlertState, Severity
from core.db import make_engine
from devices.registry import Registry

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
PER_WRITER = 15


def _service(url: str, reg: Registry) -> AlertService:
    engine = make_engine(url)  # a connection pool of its own, as another process has
    svc = AlertService(
        engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    svc.load(now=NOW)
    return svc


def test_two_writers_never_give_two_silences_the_same_id(registry: Registry) -> None:
    url = registry.engine.url.render_as_string(hide_password=False)
    writers = [_service(url, registry), _service(url, registry)]
    assert [w.book.next_silence_id for w in writers] == [1, 1]  # both counters start at the same id
    made: dict[int, list[Silence]] = {0: [], 1: []}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            start.wait(5)
            for n in range(PER_WRITER):
                made[k].append(
                    writers[k].add_silence(
                        reason=f"writer {k} #{n}",
                        creator=f"user{k}",
                        starts_at=NOW,
                        ends_at=NOW + timedelta(hours=1),
                        device_id=f"gate-{k}-{n:03d}",
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ids = [s.id for k in (0, 1) for s in made[k]]
    assert len(ids) == 2 * PER_WRITER and len(set(ids)) == len(ids), sorted(ids)
    stored = {s.id: s for s in AlertRepository(registry.engine).silences()}
    assert sorted(stored) == sorted(ids)
    for k in (0, 1):
        for s in made[k]:  # each id's row is the silence its writer made (nobody overwrote another's)
            assert (stored[s.id].reason, stored[s.id].device_id) == (s.reason, s.device_id)
    writers[0].end_silence(made[0][0].id)  # a later write of one writer touches its own row only
    for w in writers:
        w.repo.engine.dispose()
    after = {s.id: s for s in AlertRepository(registry.engine).silences()}
    assert len(after) == 2 * PER_WRITER and after[made[0][0].id].ended
    assert after[made[1][0].id].reason == made[1][0].reason


def _alert(**kw: object) -> Alert:
    a = Alert(
        id=7,
        rule_id="G1",
        device_id="gate-gz-0001",
        region_id="gz-b1",
        severity=Severity.WARNING,
        state=AlertState.FIRING,
        title_zh="t",
        title_en="t",
        dedup_key="G1:gate-gz-0001",
        started_at=NOW,
        updated_at=NOW,
        region_path=("gd", "gz", "gz-b1"),
        silenced=True,
    )
    return replace(a, **kw)  # type: ignore[arg-type]


def test_silences_holding_matches_scope_time_and_state() -> None:
    def sil(i: int, **kw: object) -> Silence:
        base = Silence(i, "r", "admin", NOW - timedelta(minutes=5), NOW + timedelta(hours=1))
        return replace(base, **kw)  # type: ignore[arg-type]

    city, device, rule = sil(1, region_id="gz"), sil(2, device_id="gate-gz-0001"), sil(3, rule_id="G1")
    other_city, other_rule = sil(4, region_id="sz"), sil(5, rule_id="G2")
    later = sil(6, region_id="gz", starts_at=NOW + timedelta(minutes=1))
    ended = sil(7, region_id="gz", ended=True)
    every = [city, device, rule, other_city, other_rule, later, ended]
    assert [s.id for s in silences_holding(_alert(), every, NOW)] == [1, 2, 3]
    assert silences_holding(_alert(silenced=False), every, NOW) == []  # not held back: nothing to explain
    assert silences_holding(_alert(state=AlertState.RESOLVED), every, NOW) == []
    assert [s.id for s in silences_holding(_alert(), every, NOW + timedelta(minutes=2))] == [1, 2, 3, 6]


def _writer_process(url: str, k: int, start: Any, out: Any) -> None:
    """One process of its own (spawned): loads the alert service and creates silences once both are ready."""
    engine = make_engine(url)
    reg = Registry(engine)
    svc = AlertService(
        engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    svc.load(now=NOW)
    start.wait(30)
    ids = [
        svc.add_silence(
            reason=f"process {k} #{n}",
            creator=f"user{k}",
            starts_at=NOW,
            ends_at=NOW + timedelta(hours=1),
            device_id=f"gate-{k}-{n:03d}",
        ).id
        for n in range(PER_WRITER)
    ]
    out.put((k, ids))
    engine.dispose()


def test_two_processes_never_give_two_silences_the_same_id(registry: Registry) -> None:
    url = registry.engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer_process, args=(url, k, start, out)) for k in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    ids = got[0] + got[1]
    assert len(set(ids)) == 2 * PER_WRITER, sorted(ids)
    stored = {s.id: s for s in AlertRepository(registry.engine).silences()}
    assert sorted(stored) == sorted(ids)
    for k in (0, 1):
        assert all(stored[i].reason.startswith(f"process {k} ") for i in got[k])
