"""The audit log for auditors: list with filters, export as CSV, verify the hash chain (devices/audit.py).

Only the security auditor (``auditor``) and administrators of the whole tree may read it: the log is tree-wide
and names every user, address and target. Every list item says whether it verifies against its neighbour in the
chain (``verified``); ``/audit/verify`` walks the whole chain. Every read of the log (list, verify, export) is a
sensitive read and is itself recorded in the log.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response

from devices.audit import AuditLog, AuditRecord, canonical, utc_instant
from gateway.audit import SENSITIVE_READ
from gateway.auth import Principal
from gateway.deps import AuditDep, NowDep, PrincipalDep, ReadRegistryDep
from gateway.params import EPOCH, Limit, Offset, TimeQuery, error_responses, parse_time
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["audit"], responses=error_responses(401, 403, 422, 503))

# Who may read the audit log: the security auditor of 三员分立 and admins of the whole tree.
AUDIT_READERS = frozenset({"auditor", "admin"})
MAX_EXPORT = 100_000


def require_auditor(principal: PrincipalDep) -> Principal:
    if principal.role not in AUDIT_READERS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="needs role auditor or admin")
    if principal.role != "auditor" and principal.region_ids is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="the audit log is tree-wide: needs an admin of the whole tree"
        )
    return principal


Auditor = Annotated[Principal, Depends(require_auditor)]
ActorQ = Annotated[
    str | None, Query(min_length=1, max_length=200, description="user name ('alice' finds 'alice (admin)')")
]
ActionQ = Annotated[str | None, Query(min_length=1, max_length=64, description="action, e.g. rule.override.put")]
TargetQ = Annotated[str | None, Query(min_length=1, max_length=200, description="target, exactly as recorded")]


def _time(value: str | None, name: str) -> datetime | None:
    return None if value is None else EPOCH + timedelta(milliseconds=parse_time(value, name))


def _filters(
    actor: str | None, action: str | None, target: str | None, start: str | None, end: str | None
) -> dict[str, Any]:
    return {
        "actor": actor,
        "action": action,
        "target": target,
        "since": _time(start, "start"),
        "until": _time(end, "end"),
    }


def record_json(r: AuditRecord, verified: bool) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "at": utc_instant(r.ts),
        "actor": r.actor,
        "source": r.origin,
        "action": r.action,
        "target": r.target,
        "outcome": r.outcome,
        "detail": r.detail,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "verified": verified,
    }


@router.get("/audit", dependencies=[SENSITIVE_READ])
def list_audit(
    registry: ReadRegistryDep,
    principal: Auditor,
    actor: ActorQ = None,
    action: ActionQ = None,
    target: TargetQ = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Audit records newest first, filtered by actor, action, target and time [start, end); ``verified`` is false
    for a record whose content no longer matches its hash or that does not follow the record before it."""
    f = _filters(actor, action, target, start, end)
    log = AuditLog(registry.session)
    rows = log.records(limit=limit, offset=offset, **f)
    ok = log.checked(rows)
    return {
        "total": log.count(**f),
        "limit": limit,
        "offset": offset,
        "items": [record_json(r, ok[r.id]) for r in rows],
    }


def _cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@router.get("/audit/export", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_audit(
    registry: ReadRegistryDep,
    principal: Auditor,
    audit: AuditDep,
    now: NowDep,
    actor: ActorQ = None,
    action: ActionQ = None,
    target: TargetQ = None,
    start: TimeQuery = None,
    end: TimeQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EXPORT, description=f"at most {MAX_EXPORT} records")] = MAX_EXPORT,
) -> Response:
    """The matching records in chain order (oldest first) as CSV, with a ``verified`` column. The export is
    recorded in the audit log (a sensitive read)."""
    f = _filters(actor, action, target, start, end)
    log = AuditLog(registry.session)
    rows = list(reversed(log.records(limit=limit, **f)))
    ok = log.checked(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["seq", "at", "actor", "source", "action", "target", "outcome", "detail", "prev_hash", "hash", "verified"]
    )
    for r in rows:
        text = [_cell(v) for v in (utc_instant(r.ts), r.actor, r.origin, r.action, r.target, r.outcome)]
        w.writerow([r.seq, *text, _cell(canonical(r.detail)), r.prev_hash, r.hash, str(ok[r.id]).lower()])
    audit.write(
        principal,
        "audit.export",
        "audit_log",
        now=now,
        detail={
            "records": len(rows),
            **{
                k: v
                for k, v in (("actor", actor), ("action", action), ("target", target), ("start", start), ("end", end))
                if v is not None
            },
        },
    )
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


@router.get("/audit/verify", dependencies=[SENSITIVE_READ])
def verify_audit(registry: ReadRegistryDep, principal: Auditor) -> dict[str, Any]:
    """Walk the whole chain (like ``lianfang audit verify``): ``ok``, the number of records, the head (``last_seq``,
    ``last_hash``: an anchor to keep) and every problem (edited, deleted, reordered, truncated) with its record."""
    return AuditLog(registry.session).verify().as_json()
