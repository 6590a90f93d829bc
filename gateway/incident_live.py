"""The live side of incidents, shared by the gateway's routes and the engine role's processes: the small live-stream
item of an incident change, and the recorder that writes each linkage-action step on its incident's timeline and
tells the live stream (the gateway's Broadcaster, or an engine's live relay, lianfang/engine_live.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from gateway.params import iso_at
from joint.actions import LinkageAction, Step, step_text, step_text_en
from joint.models import Incident, TimelineEntry, TimelineKind
from joint.store import JointStore


class IncidentStream(Protocol):
    def publish_incident(
        self, item: dict[str, Any], region_path: Iterable[str], member_regions: Iterable[str] = ()
    ) -> None: ...


def incident_doc_live(i: Incident, kind: str) -> dict[str, Any]:
    """The small live-stream item of an incident change; the page reads the rest through the API."""
    return {
        "id": i.id,
        "kind": kind,
        "type": i.type,
        "pattern_id": i.pattern_id,
        "state": str(i.state),
        "severity": str(i.severity),
        "title_zh": i.title_zh,
        "title_en": i.title_en,
        "region_id": i.region_id,
        "updated_at": iso_at(i.updated_at),
        "assignee": i.detail.get("assignee"),
    }


class StepRecorder:
    """Records each step of a linkage action on its incident's timeline and tells the live stream.

    Inside ``held(inc)`` (the auto-proposal when an incident opens, on the alert path: one action per gate of the
    building, up to 200) the steps of that incident are kept and written at the end in one transaction, with one
    live item per step kind built from the incident at hand; otherwise each step is written at once and the
    incident read back for its live item. (Per step, that was a transaction and a read of the incident with its
    members: the auto-proposals took a quarter of the engine's thread in bench/e2e.py.)"""

    def __init__(self, store: JointStore, broadcaster: IncidentStream, clock: Callable[[], datetime]) -> None:
        self.store, self.broadcaster, self.clock = store, broadcaster, clock
        self._local = threading.local()

    def __call__(self, a: LinkageAction, step: Step, actor: str) -> None:
        now = self.clock()
        entry = TimelineEntry(
            a.incident_id,
            now,
            TimelineKind.ACTION,
            actor,
            step_text(a, step),
            {"action": a.doc(), "step": step, "text_en": step_text_en(a, step)},
        )
        held: tuple[Incident, list[TimelineEntry]] | None = getattr(self._local, "held", None)
        if held is not None and held[0].id == a.incident_id:
            held[1].append(entry)
            return
        self.store.add_timeline([entry], now=now)
        self._live(self.store.get(a.incident_id), [step])

    def _live(self, inc: Incident | None, steps: Iterable[str]) -> None:
        if inc is None:
            return
        members = {m.region_id for m in inc.members.values()}
        for step in dict.fromkeys(steps):
            self.broadcaster.publish_incident(incident_doc_live(inc, f"action_{step}"), inc.region_path, members)

    @contextmanager
    def held(self, inc: Incident) -> Iterator[None]:
        entries: list[TimelineEntry] = []
        self._local.held = (inc, entries)
        try:
            yield
        finally:
            self._local.held = None
            if entries:
                self.store.add_timeline(entries, now=self.clock())
                self._live(inc, (str(e.data["step"]) for e in entries))
