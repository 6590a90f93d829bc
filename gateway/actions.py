"""What each role may do, by action name: ``GET /api/v1/me`` lists the caller's, and the page offers buttons for
those only. The server still checks every request on its own route (``require_role`` and the guarded powers of
docs/security.md); tests/gateway/test_me_actions.py holds this table to the role matrix of the routes.

An action is ``<object>.<verb>``. Roles: ``viewer``, ``operator``, ``admin`` (region admin), and the three officers
``sysadmin``, ``secadmin``, ``auditor`` (三员分立). "Tree-wide" actions need a user of the whole tree as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import Principal

WRITERS = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
OFFICERS = frozenset({"sysadmin", "secadmin", "auditor"})


@dataclass(frozen=True, slots=True)
class Action:
    roles: frozenset[str]
    tree_wide: bool = False  # only for a user whose scope is the whole tree
    # the routes (method, path under /api/v1) this action stands for: the roles must match the route's
    routes: tuple[tuple[str, str], ...] = ()


ACTIONS: dict[str, Action] = {
    "alerts.ack": Action(WRITERS, routes=(("POST", "/alerts/{alert_id}/ack"),)),
    "alerts.resolve": Action(WRITERS, routes=(("POST", "/alerts/{alert_id}/resolve"),)),
    "alerts.comment": Action(WRITERS, routes=(("POST", "/alerts/{alert_id}/comments"),)),
    "alerts.assign": Action(WRITERS, routes=(("POST", "/alerts/{alert_id}/assign"),)),
    "silences.create": Action(WRITERS, routes=(("POST", "/silences"),)),
    "silences.end": Action(WRITERS, routes=(("POST", "/silences/{silence_id}/end"),)),
    "rules.override": Action(
        WRITERS, routes=(("PUT", "/rules/{rule_id}/overrides"), ("DELETE", "/rules/{rule_id}/overrides"))
    ),
    "rules.disable": Action(ADMIN),  # an override with enabled=false: region admins only (guarded power)
    "rules.edit": Action(ADMIN, routes=(("PUT", "/rules/{rule_id}"), ("DELETE", "/rules/{rule_id}"))),
    "patterns.override": Action(
        WRITERS, routes=(("PUT", "/patterns/{pattern_id}/overrides"), ("DELETE", "/patterns/{pattern_id}/overrides"))
    ),
    "patterns.edit": Action(ADMIN, routes=(("PUT", "/patterns/{pattern_id}"), ("DELETE", "/patterns/{pattern_id}"))),
    "incidents.act": Action(
        WRITERS,
        routes=(
            ("POST", "/incidents/{incident_id}/ack"),
            ("POST", "/incidents/{incident_id}/investigate"),
            ("POST", "/incidents/{incident_id}/resolve"),
            ("POST", "/incidents/{incident_id}/close"),
            ("POST", "/incidents/{incident_id}/comments"),
            ("POST", "/incidents/{incident_id}/tasks/{task_id}/ack"),
            ("POST", "/incidents/{incident_id}/tasks/{task_id}/close"),
        ),
    ),
    "incidents.confirm_action": Action(ADMIN),  # decided in the handler (the device's region admin)
    "dispatches.request": Action(
        WRITERS, routes=(("POST", "/dispatches"), ("POST", "/dispatches/{dispatch_id}/close"))
    ),
    "dispatches.approve": Action(ADMIN, routes=(("POST", "/dispatches/{dispatch_id}/approve"),)),
    "devices.write": Action(
        ADMIN,
        routes=(
            ("POST", "/devices"),
            ("PATCH", "/devices/{device_id}"),
            ("POST", "/devices/{device_id}/credentials"),
            ("POST", "/devices/{device_id}/decommission"),
        ),
    ),
    "audit.read": Action(
        frozenset({"auditor", "admin"}),
        tree_wide=True,
        routes=(("GET", "/audit"), ("GET", "/audit/export"), ("GET", "/audit/verify")),
    ),
    "users.read": Action(OFFICERS, routes=(("GET", "/users"),)),
    "users.create": Action(frozenset({"sysadmin"}), routes=(("POST", "/users"),)),
    "users.password": Action(frozenset({"sysadmin"})),  # PATCH /users/{name} with a password
    "users.enable": Action(frozenset({"sysadmin", "secadmin"}), routes=(("PATCH", "/users/{name}"),)),
    "users.roles": Action(frozenset({"secadmin"})),  # PATCH /users/{name} with a role or scope
    "config.read": Action(frozenset({"sysadmin"}), tree_wide=True, routes=(("GET", "/config"),)),
    "config.write": Action(frozenset({"sysadmin"}), tree_wide=True, routes=(("PATCH", "/config"),)),
    "security.policy.read": Action(OFFICERS, routes=(("GET", "/security/policy"),)),
    "security.policy.write": Action(frozenset({"secadmin"}), tree_wide=True, routes=(("PATCH", "/security/policy"),)),
}


def may(principal: Principal, action: str) -> bool:
    """Whether ``principal``'s role (and scope, for a tree-wide action) allows ``action``. Pure."""
    a = ACTIONS.get(action)
    if a is None or principal.role not in a.roles:
        return False
    return not a.tree_wide or principal.region_id is None


def actions_of(principal: Principal) -> list[str]:
    """The actions ``principal`` may take, sorted. Pure."""
    return sorted(name for name in ACTIONS if may(principal, name))
