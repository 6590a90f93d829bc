"""Liveness and readiness (store, registry, broker, ingest). Unauthenticated, for probes and the page header."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from gateway.context import HealthCallback
from gateway.deps import ContextDep, RegistryDep, StoreDep
from gateway.routes import API_PREFIX

logger = logging.getLogger(__name__)
router = APIRouter(prefix=API_PREFIX, tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _component(callback: HealthCallback) -> dict[str, Any]:
    try:
        info = dict(callback())
    except Exception as exc:
        logger.warning("health callback failed: %s", exc)
        return {"ok": False, "error": str(exc)[:200]}
    ok = info.get("ok", info.get("connected", False))
    info["ok"] = bool(ok)
    return info


def _store_notes(store: object, ingest: dict[str, Any]) -> list[str]:
    """Notes of the telemetry store (InfluxStore.health_note): this process's store, and the stores of the ingest
    processes that report over the broker (their status' store_note), each named by its process."""
    out: list[str] = []
    try:
        own = getattr(store, "health_note", None)
        note = own() if callable(own) else None
    except Exception as exc:
        note = f"health note failed: {str(exc)[:200]}"
    if note:
        out.append(note)
    if ingest.get("store_note") and not out:  # ingest in this process writes the same store: its note is the one above
        out.append(str(ingest["store_note"]))
    processes = ingest.get("processes")
    if isinstance(processes, dict):
        for src, doc in sorted(processes.items()):
            if isinstance(doc, dict) and doc.get("store_note"):
                out.append(f"ingest {src}: {doc['store_note']}")
    return out


@router.get("/health/ready")
def ready(ctx: ContextDep, store: StoreDep, registry: RegistryDep, response: Response) -> dict[str, Any]:
    """Readiness: 200 when the store, the registry database, the broker and ingest are all fine, else 503 with
    ``reasons``. Ingest is not fine while it is stalled (``ingest/stall.py``): its oldest unacknowledged message
    is older than ``ingest.stall_after_s``, its writer has spent that long on one batch, or the store fails.

    With ``database_read_url``, ``checks.database_replica`` shows the replica (reachable, replay lag, LSNs, where
    reads go); a replica down or too far behind is listed in ``notes`` and does not make the API unready: its reads
    fall back to the primary."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        checks["store"] = {"ok": bool(store.ping())}
    except Exception as exc:
        checks["store"] = {"ok": False, "error": str(exc)[:200]}
    try:
        with registry.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["registry"] = {"ok": True}
    except Exception as exc:
        checks["registry"] = {"ok": False, "error": type(exc).__name__}
    checks["broker"] = _component(ctx.broker_status)
    checks["ingest"] = _component(ctx.ingest_status)
    if ctx.alerts is not None:
        checks["alerts"] = _component(ctx.alerts.status)
    if ctx.ingress is not None:
        checks["http_ingress"] = _component(ctx.ingress.status)
    notes: list[str] = []
    store_notes = _store_notes(store, checks["ingest"])
    if store_notes:  # the side store's flushes failing (core/store/side.py): a note, the points still go in
        checks["store"]["note"] = "; ".join(store_notes)
        notes.extend(f"store: {n}" for n in store_notes)
    if ctx.read_router is not None:  # database_read_url: measured now; down or behind is a note, reads use the primary
        checks["database_replica"] = _component(ctx.read_router.status)
        if checks["database_replica"].get("note"):
            notes.append(f"database_replica: {checks['database_replica']['note']}")
    is_ready = all(c["ok"] for c in checks.values())
    if not is_ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        # One line per failing component, e.g. "ingest: the oldest of 1200 unacknowledged messages is 41 s old".
        reasons = [
            f"{name}: {c.get('reason') or c.get('error') or c.get('detail') or c.get('note') or 'not ok'}"
            for name, c in checks.items()
            if not c["ok"]
        ]
        return {"ready": False, "reasons": reasons, "checks": checks, **({"notes": notes} if notes else {})}
    return {"ready": is_ready, "checks": checks, **({"notes": notes} if notes else {})}
