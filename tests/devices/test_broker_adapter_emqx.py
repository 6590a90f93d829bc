"""The EMQX adapter skeleton: request shapes only, against httpx.MockTransport (no EMQX on this machine; the
shapes follow EMQX 5's documented HTTP API, devices/broker_adapter_emqx.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from devices.broker_adapter import BrokerAdapter
from devices.broker_adapter_emqx import RULES_PATH, EmqxAdapter, device_rules


class FakeEmqx:
    """Records requests and keeps just enough state (users, rules, bans) to answer the adapter's reads."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.users: dict[str, str] = {}
        self.rules: dict[str, list[dict[str, str]]] = {}
        self.banned: set[str] = set()

    def handler(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        path = req.url.path
        users = "/api/v5/authentication/password_based%3Abuilt_in_database/users"
        if req.method == "POST" and path.endswith("/import_users"):
            assert req.url.params["type"] == "plain"
            body = req.content.decode()
            start = body.index("[")
            items = json.loads(body[start : body.rindex("]") + 1])
            for u in items:
                self.users[u["user_id"]] = u["password"]
            return httpx.Response(200, json={"total": len(items), "success": len(items)})
        if req.method == "POST" and path == RULES_PATH:
            for item in json.loads(req.content):
                self.rules[item["username"]] = item["rules"]
            return httpx.Response(204)
        if req.method == "GET" and req.url.raw_path.decode().split("?")[0] == users:
            data = [{"user_id": u, "is_superuser": False} for u in sorted(self.users)]
            return httpx.Response(200, json={"data": data, "meta": {"page": 1, "limit": 1000, "count": len(data)}})
        if req.method == "GET" and path.startswith(RULES_PATH + "/"):
            name = path.rsplit("/", 1)[1]
            return httpx.Response(200, json={"username": name, "rules": self.rules.get(name, [])})
        if req.method == "PUT" and req.url.raw_path.decode().startswith(users + "/"):
            name = req.url.raw_path.decode().rsplit("/", 1)[1]
            if name not in self.users:
                return httpx.Response(404, json={"code": "NOT_FOUND", "message": "User not found"})
            self.users[name] = json.loads(req.content)["password"]
            return httpx.Response(200, json={"user_id": name})
        if req.method == "DELETE" and req.url.raw_path.decode().startswith(users + "/"):
            self.users.pop(req.url.raw_path.decode().rsplit("/", 1)[1], None)
            return httpx.Response(204)
        if req.method == "DELETE" and path.startswith(RULES_PATH + "/"):
            self.rules.pop(path.rsplit("/", 1)[1], None)
            return httpx.Response(204)
        if req.method == "POST" and path == "/api/v5/banned":
            self.banned.add(json.loads(req.content)["who"])
            return httpx.Response(200, json={})
        if req.method == "DELETE" and path.startswith("/api/v5/banned/username/"):
            self.banned.discard(path.rsplit("/", 1)[1])
            return httpx.Response(204)
        if req.method == "GET" and path == "/api/v5/banned":
            data = [{"as": "username", "who": w} for w in sorted(self.banned)]
            return httpx.Response(200, json={"data": data, "meta": {"page": 1, "limit": 1000, "count": len(data)}})
        if req.method == "DELETE" and path.startswith("/api/v5/clients/"):
            return httpx.Response(404, json={"code": "CLIENTID_NOT_FOUND", "message": "not connected"})
        return httpx.Response(400, json={"code": "UNEXPECTED", "message": f"{req.method} {path}"})


def _adapter() -> tuple[EmqxAdapter, FakeEmqx]:
    fake = FakeEmqx()
    client = httpx.Client(base_url="http://emqx.invalid:18083", transport=httpx.MockTransport(fake.handler))
    adapter = EmqxAdapter(client)
    _typed: BrokerAdapter = adapter  # mypy: the skeleton implements the interface
    return adapter, fake


def _calls(fake: FakeEmqx) -> list[tuple[str, str]]:
    return [(r.method, r.url.raw_path.decode().split("?")[0]) for r in fake.requests]


def test_bulk_add_is_one_import_and_one_rules_request() -> None:
    adapter, fake = _adapter()
    devices = {f"gate-{i:04d}": f"secret-{i}" for i in range(250)}
    assert adapter.add(devices) == {}
    assert _calls(fake) == [
        ("POST", "/api/v5/authentication/password_based%3Abuilt_in_database/import_users"),
        ("POST", RULES_PATH),
    ]
    upload: Any = fake.requests[0]
    assert b'name="filename"; filename="devices.json"' in upload.content
    assert fake.users["gate-0007"] == "secret-7"
    assert fake.rules["gate-0007"] == device_rules("gate-0007")
    assert {r["topic"] for r in device_rules("gate-0007")} == {
        "lf/v1/gate-0007/telemetry",
        "lf/v1/gate-0007/event",
        "lf/v1/gate-0007/status",
        "lf/v1/gate-0007/cmd",
    }
    assert set(adapter.verify(list(devices)).values()) == {""}
    assert adapter.add({"admin": "x"}) == {"admin": "the name of a built-in broker account"}


def test_rotate_disable_remove_kick_the_session() -> None:
    adapter, fake = _adapter()
    adapter.add({"gate-0001": "old", "gate-0002": "x"})
    fake.requests.clear()
    assert adapter.rotate({"gate-0001": "new", "gate-9999": "y"}) == {"gate-9999": "missing on the broker"}
    assert fake.users["gate-0001"] == "new"
    assert ("DELETE", "/api/v5/clients/gate-0001") in _calls(fake)
    assert adapter.set_enabled(["gate-0002"], False) == {}
    assert json.loads(fake.requests[-2].content) == {"as": "username", "who": "gate-0002", "by": "lianfang"}
    assert adapter.verify(["gate-0002"], disabled=["gate-0002"]) == {"gate-0002": ""}
    assert adapter.verify(["gate-0002"]) == {"gate-0002": "disabled"}
    assert adapter.set_enabled(["gate-0002"], True) == {}
    assert adapter.list()["gate-0002"].enabled
    assert adapter.remove(["gate-0001"]) == {}
    assert adapter.verify_removed(["gate-0001", "gate-0002"]) == {"gate-0002": "still an EMQX user"}
    assert "gate-0001" not in fake.rules


def test_an_api_error_names_every_device_of_the_request() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": "BAD_REQUEST", "message": "bad file"})

    adapter = EmqxAdapter(httpx.Client(base_url="http://emqx.invalid", transport=httpx.MockTransport(refuse)))
    assert adapter.add({"gate-0001": "a", "gate-0002": "b"}) == {
        "gate-0001": "import_users: HTTP 400 BAD_REQUEST: bad file",
        "gate-0002": "import_users: HTTP 400 BAD_REQUEST: bad file",
    }
