"""The region tree (only the caller's subtree), with device counts rolled up the tree."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from core.store import DeviceState
from devices.liveness import is_online
from devices.models import Device, Region
from devices.registry import expected_interval
from gateway.auth import Principal
from gateway.deps import NowDep, PrincipalDep, RegistryDep, StoreDep
from gateway.params import RegionPath, error_responses
from gateway.routes import API_PREFIX
from gateway.scope import region_filter, region_or_404
from gateway.views import region_json

router = APIRouter(prefix=API_PREFIX, tags=["regions"], responses=error_responses(401, 404, 422, 503))


def build_tree(
    regions: list[Region],
    devices: list[Device],
    states: dict[str, DeviceState],
    principal: Principal,
    now_ms: int,
) -> list[dict[str, Any]]:
    """Visible regions as nested nodes; each counts the devices of its whole subtree. Pure."""
    visible = [r for r in regions if principal.sees_region(r.id)]
    nodes: dict[str, dict[str, Any]] = {}
    for r in visible:
        node = region_json(r)
        node["devices"] = {"total": 0, "online": 0, "offline": 0, "disabled": 0}
        node["children"] = []
        nodes[r.id] = node
    paths = {r.id: [p for p in r.path.split("/") if p] for r in visible}
    for d in devices:
        if d.region_id not in nodes:
            continue
        if not d.enabled:
            key = "disabled"
        elif is_online(states.get(d.id), expected_interval(d), now_ms):
            key = "online"
        else:
            key = "offline"
        for rid in paths[d.region_id]:
            counted = nodes.get(rid)
            if counted is not None:
                counted["devices"]["total"] += 1
                counted["devices"][key] += 1
    roots: list[dict[str, Any]] = []
    for r in visible:  # ordered by path: parents come before children
        parent = nodes.get(r.parent_id) if r.parent_id is not None else None
        (parent["children"] if parent is not None else roots).append(nodes[r.id])
    return roots


def _tree(registry: RegistryDep, store: StoreDep, principal: Principal, now_ms: int) -> list[dict[str, Any]]:
    ids = region_filter(registry, principal, None)
    devices, _ = registry.devices(region_ids=ids)
    states = store.device_states(None if ids is None else [d.id for d in devices])
    return build_tree(registry.regions(), devices, states, principal, now_ms)


@router.get("/regions")
def regions(registry: RegistryDep, store: StoreDep, principal: PrincipalDep, now: NowDep) -> dict[str, Any]:
    """The caller's part of the region tree, each node with device counts (total, online, offline, disabled)."""
    return {"regions": _tree(registry, store, principal, int(now.timestamp() * 1000))}


@router.get("/regions/{region_id}")
def region(
    region_id: RegionPath, registry: RegistryDep, store: StoreDep, principal: PrincipalDep, now: NowDep
) -> dict[str, Any]:
    """One region with its subtree and counts; 404 if it does not exist or is outside the caller's scope."""
    region_or_404(registry, principal, region_id)
    sub = Principal(principal.name, principal.role, region_id, frozenset(registry.subtree_ids(region_id)))
    roots = _tree(registry, store, sub, int(now.timestamp() * 1000))
    return roots[0]
