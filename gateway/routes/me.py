"""Who the caller is: the page asks once at start to show the user and to offer only the actions the role allows."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import PrincipalDep
from gateway.params import error_responses
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["me"], responses=error_responses(401))

# The roles that may acknowledge and resolve alerts (gateway/routes/alerts.py: Writer).
ALERT_ACTORS = ("operator", "admin")


@router.get("/me")
def me(principal: PrincipalDep) -> dict[str, Any]:
    """The caller's user name, role and region scope (``region_id`` null: the whole tree), and what the role may do
    on the page (``can_act_on_alerts``: acknowledge and resolve). The server still checks every action."""
    return {
        "name": principal.name,
        "role": principal.role,
        "region_id": principal.region_id,
        "can_act_on_alerts": principal.role in ALERT_ACTORS,
    }
