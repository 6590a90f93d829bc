"""The joint-control correlator of an engine of some partitions (``alerts.engine_partitions``, docs/scaling.md).

Engines of different partitions share the incidents and tasks tables. ``PartitionedCorrelator`` gives new
incidents and tasks ids of the engine's own residue (``id % partitions == its first partition``), as
``alerts.wiring.PartitionedAlertBook`` does for alerts, so two engines never write the same row; and it restores
only the incidents it owns (``id % partitions`` among its partitions) with their tasks: the others are held live
by their own engine, where people's actions on them are sent (lianfang/engine_commands.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from joint.correlator import Correlator
from joint.models import Incident, Task
from joint.patterns import PatternSet


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
