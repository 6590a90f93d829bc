"""EMQX adapter (skeleton): device identities through EMQX 5's documented HTTP API.

NOT run against an EMQX broker: there is none on the project's machines. The request shapes follow EMQX's
documentation ("Use HTTP API to Manage User Data", "Use Built-in Database" authorization) and are tested with
``httpx.MockTransport`` only (tests/devices/test_broker_adapter_emqx.py). Before using it, run it against a real
EMQX 5 and adjust what differs.

- Authentication: the ``password_based:built_in_database`` authenticator. Bulk add is one
  ``POST /api/v5/authentication/{id}/import_users?type=plain`` (multipart JSON file of ``user_id``/``password``);
  rotate is ``PUT .../users/{user_id}``; remove is ``DELETE .../users/{user_id}``; list is ``GET .../users``.
- Authorization: the ``built_in_database`` source, one rule set per device username with exactly PROTOCOL.md's
  topics (``POST /api/v5/authorization/sources/built_in_database/rules/users``, a list in one request).
- Disable: a username ban (``POST /api/v5/banned`` ``as: username``), which also keeps it from connecting;
  enable removes the ban. A rotated, disabled or removed device is kicked (``DELETE /api/v5/clients/{id}``).
- Verify: the user and its rules read back (EMQX does not give the password back; it cannot be proven without
  logging in as the device).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from core.errors import BrokerUnavailable
from devices.broker_adapter import RESERVED_USERNAMES, BrokerIdentity

AUTHN_ID = "password_based:built_in_database"
RULES_PATH = "/api/v5/authorization/sources/built_in_database/rules/users"
PAGE = 1000


def device_rules(device_id: str) -> list[dict[str, str]]:
    """What PROTOCOL.md allows a device, as EMQX built-in-database rules (everything else: EMQX's no_match deny)."""
    root = f"lf/v1/{device_id}"
    return [
        {"topic": f"{root}/telemetry", "permission": "allow", "action": "publish"},
        {"topic": f"{root}/event", "permission": "allow", "action": "publish"},
        {"topic": f"{root}/status", "permission": "allow", "action": "publish"},
        {"topic": f"{root}/cmd", "permission": "allow", "action": "subscribe"},
    ]


class EmqxAdapter:
    """``client``: an ``httpx.Client`` with EMQX's base URL and API key (``auth=(key, secret)``)."""

    name = "emqx"

    def __init__(self, client: httpx.Client) -> None:
        self.http = client
        self.users = f"/api/v5/authentication/{quote(AUTHN_ID, safe='')}/users"
        self.import_path = f"/api/v5/authentication/{quote(AUTHN_ID, safe='')}/import_users"

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"EMQX API {method} {path}: {exc}") from exc
        if resp.status_code >= 500:
            raise BrokerUnavailable(f"EMQX API {method} {path}: HTTP {resp.status_code}")
        return resp

    @staticmethod
    def _error(resp: httpx.Response) -> str:
        try:
            body = resp.json()
            return f"HTTP {resp.status_code} {body.get('code', '')}: {body.get('message', '')}".strip()
        except ValueError:
            return f"HTTP {resp.status_code}"

    def _kick(self, device_ids: Sequence[str]) -> None:
        for d in device_ids:
            self._call("DELETE", f"/api/v5/clients/{quote(d, safe='')}")  # 404: not connected

    def add(self, device_secrets: Mapping[str, str], *, disabled: Collection[str] = ()) -> dict[str, str]:
        errors = {d: "the name of a built-in broker account" for d in device_secrets if d in RESERVED_USERNAMES}
        todo = [d for d in device_secrets if d not in errors]
        if not todo:
            return errors
        users = [{"user_id": d, "password": device_secrets[d], "is_superuser": False} for d in todo]
        files = {"filename": ("devices.json", json.dumps(users), "application/json")}
        resp = self._call("POST", self.import_path, params={"type": "plain"}, files=files)
        if resp.status_code >= 400:
            return {**errors, **{d: f"import_users: {self._error(resp)}" for d in todo}}
        rules = [{"username": d, "rules": device_rules(d)} for d in todo]
        resp = self._call("POST", RULES_PATH, json=rules)
        if resp.status_code >= 400:
            return {**errors, **{d: f"authorization rules: {self._error(resp)}" for d in todo}}
        errors.update(self.set_enabled([d for d in todo if d in disabled], False))
        return errors

    def rotate(self, device_secrets: Mapping[str, str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for d, secret in device_secrets.items():
            resp = self._call("PUT", f"{self.users}/{quote(d, safe='')}", json={"password": secret})
            if resp.status_code == 404:
                errors[d] = "missing on the broker"
            elif resp.status_code >= 400:
                errors[d] = self._error(resp)
        self._kick([d for d in device_secrets if d not in errors])
        return errors

    def set_enabled(self, device_ids: Sequence[str], enabled: bool) -> dict[str, str]:
        errors: dict[str, str] = {}
        for d in device_ids:
            if enabled:
                resp = self._call("DELETE", f"/api/v5/banned/username/{quote(d, safe='')}")
                ok = resp.status_code < 400 or resp.status_code == 404
            else:
                resp = self._call("POST", "/api/v5/banned", json={"as": "username", "who": d, "by": "lianfang"})
                ok = resp.status_code < 400 or resp.status_code == 409  # 409: already banned
            if not ok:
                errors[d] = self._error(resp)
        if not enabled:
            self._kick([d for d in device_ids if d not in errors])
        return errors

    def remove(self, device_ids: Sequence[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for d in device_ids:
            for path in (f"{self.users}/{quote(d, safe='')}", f"{RULES_PATH}/{quote(d, safe='')}"):
                resp = self._call("DELETE", path)
                if resp.status_code >= 400 and resp.status_code != 404:
                    errors.setdefault(d, self._error(resp))
        self._kick([d for d in device_ids if d not in errors])
        return errors

    def _banned(self) -> set[str]:
        out: set[str] = set()
        page = 1
        while True:
            body = self._call("GET", "/api/v5/banned", params={"page": page, "limit": PAGE}).json()
            items = body.get("data", [])
            out |= {str(b.get("who")) for b in items if b.get("as") == "username"}
            if len(items) < PAGE:
                return out
            page += 1

    def verify(
        self,
        device_ids: Sequence[str],
        *,
        device_secrets: Mapping[str, str] | None = None,
        disabled: Collection[str] = (),
    ) -> dict[str, str]:
        users = self.list()
        out: dict[str, str] = {}
        for d in device_ids:
            if d not in users:
                out[d] = "missing on the broker"
                continue
            resp = self._call("GET", f"{RULES_PATH}/{quote(d, safe='')}")
            rules = resp.json().get("rules", []) if resp.status_code == 200 else []
            want = {(r["topic"], r["permission"], r["action"]) for r in device_rules(d)}
            have = {(str(r.get("topic")), str(r.get("permission")), str(r.get("action"))) for r in rules}
            problems = [] if have == want else ["authorization rules differ from PROTOCOL.md"]
            if users[d].enabled == (d in disabled):
                problems.append("enabled" if users[d].enabled else "disabled")
            out[d] = "; ".join(problems)
        return out

    def verify_removed(self, device_ids: Sequence[str]) -> dict[str, str]:
        users = self.list()
        return {d: "still an EMQX user" for d in device_ids if d in users}

    def list(self) -> dict[str, BrokerIdentity]:
        banned = self._banned()
        out: dict[str, BrokerIdentity] = {}
        page = 1
        while True:
            body = self._call("GET", self.users, params={"page": page, "limit": PAGE}).json()
            items = body.get("data", [])
            for u in items:
                d = str(u.get("user_id"))
                if not u.get("is_superuser"):
                    out[d] = BrokerIdentity(d, d not in banned)
            if len(items) < PAGE:
                return out
            page += 1
