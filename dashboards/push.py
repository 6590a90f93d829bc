"""Send the generated dashboards to an existing Grafana over its HTTP API (httpx; no Grafana client library).

``POST /api/dashboards/db`` with ``overwrite: true`` into a folder found by uid; the folder is created
(``POST /api/folders``) when ``GET /api/folders/{uid}`` says it is missing. Authentication is a service-account
token (``Authorization: Bearer ...``). Grafana answers an error as JSON with a ``message``: that message is what
:class:`PushError` carries.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.errors import UserError
from dashboards.schema import TILES_VAR

logger = logging.getLogger(__name__)

FOLDER_UID = "lianfang"
FOLDER_TITLE = "联防 Lianfang"


class PushError(UserError):
    """Grafana refused a request, or could not be reached."""


@dataclass(frozen=True, slots=True)
class Pushed:
    file: str
    uid: str
    url: str
    version: int | None


def _message(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return resp.text[:300]


class GrafanaClient:
    """The three calls push needs, on one ``httpx.Client``."""

    def __init__(
        self, url: str, token: str, *, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> GrafanaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PushError(f"Grafana at {self._http.base_url} is not reachable: {type(exc).__name__}: {exc}") from exc

    def ensure_folder(self, uid: str, title: str) -> bool:
        """Create the folder unless it exists; True when it was created."""
        resp = self._send("GET", f"/api/folders/{uid}")
        if resp.status_code == 200:
            return False
        if resp.status_code != 404:
            raise PushError(f"Grafana: GET /api/folders/{uid}: HTTP {resp.status_code}: {_message(resp)}")
        resp = self._send("POST", "/api/folders", {"uid": uid, "title": title})
        if resp.status_code not in (200, 201):
            raise PushError(f"Grafana: creating folder {uid}: HTTP {resp.status_code}: {_message(resp)}")
        logger.info("created Grafana folder %s", uid)
        return True

    def push_dashboard(self, model: dict[str, Any], folder_uid: str, message: str) -> dict[str, Any]:
        body = {"dashboard": {**model, "id": None}, "folderUid": folder_uid, "overwrite": True, "message": message}
        resp = self._send("POST", "/api/dashboards/db", body)
        if resp.status_code != 200:
            raise PushError(f"Grafana refused dashboard {model.get('uid')}: HTTP {resp.status_code}: {_message(resp)}")
        out: Any = resp.json()
        return out if isinstance(out, dict) else {}


TILE_PLACEHOLDERS = ("{z}", "{x}")


def check_tile_url(url: str) -> str:
    """An XYZ tile URL template on http(s) with {z}, {x} and {y} (or {-y}); raises PushError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PushError(f"--tile-url {url!r}: an http:// or https:// URL template was expected")
    if not all(p in url for p in TILE_PLACEHOLDERS) or ("{y}" not in url and "{-y}" not in url):
        raise PushError(f"--tile-url {url!r}: the template must contain {{z}}, {{x}} and {{y}} (or {{-y}})")
    return url


def with_tile_url(model: dict[str, Any], url: str) -> dict[str, Any]:
    """The dashboard with its basemap variable ($tiles, dashboards/schema.py) set to ``url``; unchanged if it has
    none."""
    out: dict[str, Any] = copy.deepcopy(model)
    for var in out.get("templating", {}).get("list", []):
        if var.get("name") == TILES_VAR and var.get("type") == "textbox":
            var["query"] = url
            var["current"] = {"text": url, "value": url}
            var["options"] = [{"selected": True, "text": url, "value": url}]
    return out


def push(
    client: GrafanaClient,
    files: list[Path],
    *,
    folder_uid: str = FOLDER_UID,
    folder_title: str = FOLDER_TITLE,
    message: str = "lianfang dashboards push",
    tile_url: str | None = None,
) -> list[Pushed]:
    """Push every file (a dashboard's JSON model) into the folder, creating the folder first if needed. With
    ``tile_url``, the maps' basemap variable is set to that internal tile server."""
    if tile_url is not None:
        check_tile_url(tile_url)
    models: list[tuple[Path, dict[str, Any]]] = []
    for f in files:
        try:
            model = json.loads(f.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise PushError(f"{f}: not a dashboard JSON file: {exc}") from exc
        if not isinstance(model, dict) or not model.get("uid"):
            raise PushError(f"{f}: a dashboard JSON model with a uid was expected")
        models.append((f, model if tile_url is None else with_tile_url(model, tile_url)))
    client.ensure_folder(folder_uid, folder_title)
    done = []
    for f, model in models:
        answer = client.push_dashboard(model, folder_uid, message)
        version = answer.get("version")
        done.append(
            Pushed(f.name, str(model["uid"]), str(answer.get("url", "")), version if isinstance(version, int) else None)
        )
    return done
