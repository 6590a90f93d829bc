"""Who the caller is: the page asks once at start to show the user and to offer only the actions the role allows."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.actions import actions_of, may
from gateway.deps import PrincipalDep
from gateway.params import error_responses
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["me"], responses=error_responses(401))


@router.get("/me")
def me(principal: PrincipalDep) -> dict[str, Any]:
    """The caller's user name, role and region scope (``region_id`` null: the whole tree), and ``actions``: what
    the role may do (``alerts.ack``, ``silences.create``, ``rules.override``, ``devices.write``, ``users.create``,
    ``audit.read``, ...; the table is ``gateway/actions.py``), so the page offers only those buttons.
    ``can_act_on_alerts`` (acknowledge and resolve) is kept for older pages. The server still checks every action."""
    return {
        "name": principal.name,
        "role": principal.role,
        "region_id": principal.region_id,
        "actions": actions_of(principal),
        "can_act_on_alerts": may(principal, "alerts.ack"),
    }
