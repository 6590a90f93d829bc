"""Correlation pattern kinds: one module per kind behind one protocol (``PatternKind``), and their registry.

A kind sees the alert facts of its pattern's members, keeps its windows in a JSON-able ``dict`` (persisted by the
service, so a restart keeps every window) and reports ``Hit``s: "these alerts make an incident in this scope".
The correlator (``joint/correlator.py``) turns hits into incidents; a fact whose ``key`` names an open incident
joins it instead. Pure: no I/O, no clock.
"""

from __future__ import annotations

from joint.kinds.absence import AbsenceKind
from joint.kinds.base import AlertFact, Entry, Hit, PatternKind, scope_path
from joint.kinds.cross_region import CrossRegionKind
from joint.kinds.group import GroupKind
from joint.kinds.sequence import SequenceKind

KINDS: dict[str, PatternKind] = {
    "group": GroupKind(),
    "sequence": SequenceKind(),
    "absence": AbsenceKind(),
    "cross_region": CrossRegionKind(),
}

__all__ = ["KINDS", "AlertFact", "Entry", "Hit", "PatternKind", "scope_path"]
