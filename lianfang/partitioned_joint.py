"""The joint-control correlator of an engine of some partitions (``alerts.engine_partitions``, docs/scaling.md).

Engines of different partitions share the incidents and tasks tables. ``PartitionedCorrelator`` gives new
incidents and tasks ids of the engine's own residue (``id % partitions == its first partition``), as
``alerts.wiring.PartitionedAlertBook`` does for alerts, so two engines never write the same row; and it restores
only the incidents it owns (``id % partitions`` among its partitions) with their tasks: the others are held live
by their own engine, where people's actions on them are sent (lianfang/engine_commands.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from joint.correlator import Correlator
from joint.models import Incident, Task
from joint.patterns import PatternSet

logger = logging.getLogger(__name__)


class PartitionedCorrelator(Correlator):
    def __init__(self, patterns: PatternSet, levels: Mapping[str, str], *, stride: int, owned: Sequence[int]) -> None:
        self._stride = stride
        self._owned = frozenset(owned)
        self._offset = min(owned)
        self._nid = self._ntid = self._offset or stride
        super().__init__(patterns, levels)

    def _residue(self, value: int) -> int:
        return value + (self._offset - value) % self._stride  # the first id >= value in this residue

    @property
    def next_incident_id(self) -> int:
        return self._nid

    @next_incident_id.setter
    def next_incident_id(self, value: int) -> None:
        self._nid = self._residue(value)

    @property
    def next_task_id(self) -> int:
        return self._ntid

    @next_task_id.setter
    def next_task_id(self, value: int) -> None:
        self._ntid = self._residue(value)

    def owns(self, incident_id: int) -> bool:
        return incident_id % self._stride in self._owned

    def restore(
        self,
        incidents: Iterable[Incident],
        tasks: Iterable[Task],
        windows: Mapping[str, Any] | None,
        *,
        next_incident_id: int,
        next_task_id: int,
    ) -> None:
        mine = [i for i in incidents if self.owns(i.id)]
        super().restore(mine, tasks, windows, next_incident_id=next_incident_id, next_task_id=next_task_id)


# The depth of each scope level in a region path (the root is 1) when the registry does not say otherwise.
DEFAULT_DEPTH: Mapping[str, int] = {"province": 1, "city": 2, "agency": 3, "building": 4}


def wide_patterns(
    patterns: PatternSet, partition_level: int, depth_of: Mapping[str, int] | None = None
) -> list[tuple[str, str]]:
    """The enabled patterns (enabled in their file, or by an override anywhere) whose scope, or the scope an
    incident of theirs escalates to (``params.escalate_to``), is wider than the partition level: their incidents
    would gather alerts of several partitions, and each engine sees only its own (docs/scaling.md, *Partitions*).
    ``depth_of``: a scope level's depth in the region paths (root 1), from the registry; ``DEFAULT_DEPTH`` for a
    level it does not name. Returns (pattern id, its widest scope), by id. Pure."""
    depths = {**DEFAULT_DEPTH, **(depth_of or {})}
    out: list[tuple[str, str]] = []
    for pid, spec in sorted(patterns.patterns.items()):
        enabled = spec.enabled or any(ov.enabled and ov.pattern in (pid, "*") for ov, _origin in patterns.overrides)
        if not enabled:
            continue
        scopes = [str(spec.scope)]
        if isinstance(spec.params.get("escalate_to"), str):
            scopes.append(str(spec.params["escalate_to"]))
        widest = min(scopes, key=lambda s: depths.get(s, partition_level))
        if depths.get(widest, partition_level) < partition_level:
            out.append((pid, widest))
    return out


def wide_patterns_warning(wide: Sequence[tuple[str, str]], partition_level: int) -> str | None:
    """The start-up warning naming ``wide`` (``wide_patterns``), or None when there is none."""
    if not wide:
        return None
    names = ", ".join(f"{pid} ({scope})" for pid, scope in wide)
    return (
        f"joint: patterns wider than the partition level {partition_level}: {names}. With several engine processes "
        "each sees only its own partitions' alerts, so these miss incidents that span partitions "
        "(docs/scaling.md, Partitions); switch them off (joint overrides) or use a wider partition level"
    )


def warn_wide_patterns(patterns: PatternSet, partition_level: int, regions: Iterable[Any]) -> str | None:
    """Log (warning) and return the start-up warning of an engine of some partitions: ``regions`` (the registry's,
    with ``level`` and ``path``) give each level's depth."""
    depth_of = {r.level: len([p for p in r.path.split("/") if p]) for r in regions}
    msg = wide_patterns_warning(wide_patterns(patterns, partition_level, depth_of), partition_level)
    if msg is not None:
        logger.warning("%s", msg)
    return msg
