"""`lianfang dashboards push` against a real HTTP server that plays Grafana's API and records every request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dashboards import build
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app

TOKEN = "glsa_test_token_0123456789"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGrafana:
    """What the receiver knows (folders) and saw (requests); ``fail_dashboards`` makes it refuse dashboards."""

    url: str = ""
    folders: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)
    fail_dashboards: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Request:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            req = Request(self.command, self.path, dict(self.headers.items()), json.loads(raw) if raw else None)
            with state.lock:
                state.requests.append(req)
            return req

        def do_GET(self) -> None:
            req = self._record()
            if req.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "invalid API key"})
            elif req.path.startswith("/api/folders/"):
                uid = req.path.rsplit("/", 1)[1]
                if uid in state.folders:
                    self._reply(200, {"uid": uid, "title": "x"})
                else:
                    self._reply(404, {"message": "folder not found"})
            else:
                self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            req = self._record()
            if req.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "invalid API key"})
            elif req.path == "/api/folders":
                state.folders.add(req.body["uid"])
                self._reply(200, {"uid": req.body["uid"], "title": req.body["title"]})
            elif req.path == "/api/dashboards/db":
                if state.fail_dashboards:
                    self._reply(412, {"message": "version-mismatch", "status": "version-mismatch"})
                    return
                uid = req.body["dashboard"]["uid"]
                self._reply(200, {"id": 1, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": 3})
            else:
                self._reply(404, {"message": "not found"})

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-grafana")
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _push(grafana: FakeGrafana, *extra: str, token: str = TOKEN) -> Any:
    return CliRunner().invoke(app, ["dashboards", "push", "--url", grafana.url + "/", "--token", token, *extra])


def test_push_creates_the_missing_folder_then_posts_every_dashboard_with_overwrite(grafana: FakeGrafana) -> None:
    result = _push(grafana, "--json")
    assert result.exit_code == 0, result.output
    reqs = grafana.requests
    assert [(r.method, r.path) for r in reqs[:2]] == [("GET", "/api/folders/lianfang"), ("POST", "/api/folders")]
    assert reqs[1].body == {"uid": "lianfang", "title": "联防 Lianfang"}
    posts = reqs[2:]
    assert all((r.method, r.path) == ("POST", "/api/dashboards/db") for r in posts)
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in reqs)
    assert all(r.headers["Content-Type"] == "application/json" for r in reqs if r.method == "POST")
    committed = {
        json.loads(p.read_text("utf-8"))["uid"]: json.loads(p.read_text("utf-8"))
        for p in build.GENERATED.glob("*.json")
    }
    assert {r.body["dashboard"]["uid"] for r in posts} == set(committed)
    for r in posts:
        assert r.body["overwrite"] is True
        assert r.body["folderUid"] == "lianfang"
        sent = dict(r.body["dashboard"])
        assert sent.pop("id") is None
        assert sent == committed[sent["uid"]]
    out = json.loads(result.stdout)
    assert {o["uid"] for o in out} == set(committed)
    assert all(o["version"] == 3 and o["url"].startswith("/d/") for o in out)


def test_push_into_an_existing_folder_creates_nothing(grafana: FakeGrafana) -> None:
    grafana.folders.add("ops")
    result = _push(grafana, "--folder-uid", "ops")
    assert result.exit_code == 0, result.output
    assert not [r for r in grafana.requests if r.path == "/api/folders"]
    assert {r.body["folderUid"] for r in grafana.requests if r.path == "/api/dashboards/db"} == {"ops"}


def test_push_with_a_bad_token_exits_1_with_grafanas_message(grafana: FakeGrafana) -> None:
    result = _push(grafana, token="wrong")
    assert result.exit_code == 1
    assert "HTTP 401" in result.output and "invalid API key" in result.output
    assert not [r for r in grafana.requests if r.path == "/api/dashboards/db"]


def test_push_refused_dashboard_exits_1(grafana: FakeGrafana) -> None:
    grafana.fail_dashboards = True
    result = _push(grafana)
    assert result.exit_code == 1
    assert "HTTP 412" in result.output and "version-mismatch" in result.output


def test_push_to_nothing_listening_is_one_line_not_a_traceback(grafana: FakeGrafana) -> None:
    url = grafana.url
    result = CliRunner().invoke(app, ["dashboards", "push", "--url", url.rsplit(":", 1)[0] + ":1", "--token", TOKEN])
    assert result.exit_code == 1
    assert "not reachable" in result.output
    assert "Traceback" not in result.output


def test_push_of_an_empty_directory_is_a_user_error(grafana: FakeGrafana, tmp_path: Path) -> None:
    result = _push(grafana, "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no dashboard JSON files" in result.output
    assert grafana.requests == []


def test_push_with_a_tile_url_sets_the_maps_basemap_variable(grafana: FakeGrafana) -> None:
    url = "http://tiles.bureau.internal/{z}/{x}/{y}.png"
    result = _push(grafana, "--tile-url", url)
    assert result.exit_code == 0, result.output
    sent = {r.body["dashboard"]["uid"]: r.body["dashboard"] for r in grafana.requests if r.path == "/api/dashboards/db"}
    tiles = [v for v in sent["lf-vehicles"]["templating"]["list"] if v["name"] == "tiles"]
    assert [(v["query"], v["current"]["value"]) for v in tiles] == [(url, url)]
    (geomap,) = [p for p in sent["lf-vehicles"]["panels"] if p["type"] == "geomap"]
    assert geomap["options"]["basemap"]["config"]["url"] == "$tiles"  # Grafana interpolates the variable
    committed = json.loads((build.GENERATED / "vehicles.json").read_text("utf-8"))
    assert [v["query"] for v in committed["templating"]["list"] if v["name"] == "tiles"] == [""]  # file unchanged


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tiles.internal/{z}/{x}/{y}.png", "http:// or https://"),
        ("http:///{z}/{x}/{y}.png", "http:// or https://"),
        ("http://tiles.internal/{z}/{x}.png", "must contain {z}, {x} and {y}"),
    ],
)
def test_push_refuses_a_tile_url_that_is_no_xyz_template(grafana: FakeGrafana, url: str, expected: str) -> None:
    result = _push(grafana, "--tile-url", url)
    assert result.exit_code == 1 and expected in result.output
    assert grafana.requests == []
