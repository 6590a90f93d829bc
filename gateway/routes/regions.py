"""The region tree (only the caller's subtree), with device counts rolled up the tree.

The counts come from the in-memory fleet index (``gateway.fleet``), kept per region and updated by every write
batch: a request rolls them up over the visible regions, never over the devices.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.auth import Principal
from gateway.deps import NowDep, PrincipalDep, ReadRegistryDep
from gateway.fleet import FleetDep, RegionRow, json_response
from gateway.params import RegionPath, error_responses
from gateway.routes import API_PREFIX
from gateway.scope import region_or_404

router = APIRouter(prefix=API_PREFIX, tags=["regions"], responses=error_responses(401, 404, 422, 503))


def build_tree(
    regions: list[RegionRow],
    counts: dict[str, tuple[int, int, int]],
    principal: Principal,
) -> list[dict[str, Any]]:
    """Visible regions as nested nodes; ``counts`` holds each region's (total, online, disabled) over its whole
    subtree (``FleetIndex.subtree_counts``). Pure."""
    nodes: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for r in regions:  # ordered by path: parents come before children
        if not principal.sees_region(r.id):
            continue
        total, online, disabled = counts.get(r.id, (0, 0, 0))
        node = {
            **r.json,
            "devices": {"total": total, "online": online, "offline": total - online - disabled, "disabled": disabled},
            "children": [],
        }
        nodes[r.id] = node
        parent = nodes.get(r.parent_id) if r.parent_id is not None else None
        (parent["children"] if parent is not None else roots).append(node)
    return roots


class TreeCache:
    """The tree's answer (JSON bytes) per scope for one version of the fleet index: concurrent and repeated requests
    of the same scope share one build while no count or region changed (``FleetIndex.current``). Thread-safe."""

    def __init__(self, max_scopes: int = 256) -> None:
        self.max_scopes = max_scopes
        self._lock = threading.Lock()
        self._version = -1
        self._items: dict[str | None, bytes] = {}

    def get(self, version: int, scope: str | None, build: Callable[[], bytes]) -> bytes:
        with self._lock:
            if version == self._version and scope in self._items:
                return self._items[scope]
        body = build()
        with self._lock:
            if version != self._version:
                self._version, self._items = version, {}
            if len(self._items) < self.max_scopes:
                self._items[scope] = body
        return body


def _tree_cache(request: Request) -> TreeCache:
    state = request.app.state
    cache: TreeCache | None = getattr(state, "region_tree_cache", None)
    if cache is None:
        with _CACHE_LOCK:
            cache = getattr(state, "region_tree_cache", None)
            if cache is None:
                cache = state.region_tree_cache = TreeCache()
    return cache


_CACHE_LOCK = threading.Lock()


@router.get("/regions", response_model=dict[str, Any])
def regions(fleet: FleetDep, principal: PrincipalDep, now: NowDep, request: Request) -> Response:
    """The caller's part of the region tree, each node with device counts (total, online, offline, disabled)."""
    now_ms = int(now.timestamp() * 1000)
    version = fleet.current(now_ms)

    def build() -> bytes:
        tree = build_tree(fleet.regions(), fleet.subtree_counts(now_ms), principal)
        return orjson.dumps({"regions": tree})

    # the visible part depends only on the principal's scope root (its subtree)
    body = _tree_cache(request).get(version, principal.region_id, build)
    return Response(body, media_type="application/json")


@router.get("/regions/{region_id}", response_model=dict[str, Any])
def region(
    region_id: RegionPath, registry: ReadRegistryDep, fleet: FleetDep, principal: PrincipalDep, now: NowDep
) -> Response:
    """One region with its subtree and counts; 404 if it does not exist or is outside the caller's scope."""
    region_or_404(registry, principal, region_id)
    if not fleet.knows_region(region_id):  # created since the index last read the registry
        fleet.build()
    sub = Principal(principal.name, principal.role, region_id, frozenset(registry.subtree_ids(region_id)))
    counts = fleet.subtree_counts(int(now.timestamp() * 1000))
    roots = build_tree(fleet.regions(), counts, sub)
    return json_response(roots[0])
