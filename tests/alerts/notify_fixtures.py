"""Real local receivers for notification tests: an HTTP server that checks requests the way WeCom, DingTalk,
Feishu and a signed-webhook consumer do, and an aiosmtpd SMTP server. Both listen on 127.0.0.1 only.

The signature checks here are written from the services' documentation, independently of alerts/notify/channels.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller

from alerts.types import Alert, AlertState, Severity
from devices.broker import free_port

WEBHOOK_SECRET = "test-webhook-secret-3f9a"
WECOM_KEY = "test-wecom-key-693a91f6"
DINGTALK_TOKEN = "test-dingtalk-token-b7c1"
DINGTALK_SECRET = "SECtest-dingtalk-secret-55d0e2"
FEISHU_TOKEN = "test-feishu-hook-0d1e"
FEISHU_SECRET = "test-feishu-secret-a4b8"

# Region tree used by the tests: province > city > agency > building.
ANCESTORS: dict[str, list[str]] = {
    "prov": ["prov"],
    "city-1": ["prov", "city-1"],
    "city-2": ["prov", "city-2"],
    "agency-1": ["prov", "city-1", "agency-1"],
    "bldg-1": ["prov", "city-1", "agency-1", "bldg-1"],
    "bldg-2": ["prov", "city-1", "agency-1", "bldg-2"],
    "bldg-9": ["prov", "city-2", "bldg-9"],
}


def ancestors_of(region_id: str) -> list[str]:
    return ANCESTORS.get(region_id, [region_id])


T0 = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)  # 14:00 in Beijing


def make_alert(
    alert_id: int,
    *,
    region: str = "bldg-1",
    severity: Severity = Severity.CRITICAL,
    rule: str = "G1",
    device: str | None = None,
    started_at: datetime = T0,
    state: AlertState = AlertState.FIRING,
    level: int = 0,
    escalation_from: datetime | None = None,
    silenced: bool = False,
) -> Alert:
    """An alert people were told of at ``started_at`` (its escalation clock starts there unless given)."""
    return Alert(
        id=alert_id,
        dedup_key=f"{rule}:{device or f'dev-{alert_id}'}",
        rule_id=rule,
        device_id=device or f"dev-{alert_id}",
        region_id=region,
        severity=severity,
        state=state,
        title_zh="门禁被强行打开",
        title_en="Door forced open",
        started_at=started_at,
        updated_at=started_at,
        escalation_level=level,
        learned_at=started_at,
        escalation_from=escalation_from or started_at,
        silenced=silenced,
    )


# --- HTTP receiver --------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int
    verdict: str  # "ok" or why the receiver refused it

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        """The human-readable content of the message, whatever the channel."""
        doc = self.json()
        if "markdown" in doc and isinstance(doc["markdown"], dict):
            md = doc["markdown"]
            return str(md.get("content") or md.get("text"))
        if "card" in doc:
            return str(doc["card"]["header"]["title"]["content"]) + "\n" + str(doc["card"]["elements"][0]["content"])
        return str(doc.get("markdown", ""))

    def alert_ids(self) -> list[int]:
        return [int(x) for x in re.findall(r"#(\d+)", self.text())]


def _verify_webhook(headers: dict[str, str], body: bytes) -> str:
    ts = headers.get("x-lianfang-timestamp", "")
    sig = headers.get("x-lianfang-signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return "stale or missing timestamp"
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "ok" if hmac.compare_digest(sig, expected) else "bad signature"


def _verify_dingtalk(query: dict[str, list[str]]) -> str:
    # https://open.dingtalk.com/document/robots/customize-robot-security-settings
    if query.get("access_token") != [DINGTALK_TOKEN]:
        return "bad token"
    ts = (query.get("timestamp") or [""])[0]
    sign = (query.get("sign") or [""])[0]  # parse_qs already URL-decoded it
    if not ts.isdigit() or abs(time.time() * 1000 - int(ts)) > 3600_000:
        return "timestamp not within one hour"
    string_to_sign = f"{ts}\n{DINGTALK_SECRET}"
    expected = base64.b64encode(
        hmac.new(DINGTALK_SECRET.encode(), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    return "ok" if sign == expected else "sign not match"


def _verify_feishu(doc: dict[str, Any]) -> str:
    # https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot (signature verification)
    ts = str(doc.get("timestamp", ""))
    if not ts.isdigit() or abs(time.time() - int(ts)) > 3600:
        return "timestamp not within one hour"
    string_to_sign = f"{ts}\n{FEISHU_SECRET}"
    expected = base64.b64encode(hmac.new(string_to_sign.encode(), b"", hashlib.sha256).digest()).decode()
    return "ok" if doc.get("sign") == expected else "sign match fail"


class Receiver:
    """Records every request; answers like the real service, or with scripted failures."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.scripted: dict[str, deque[int]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="test-http-receiver", daemon=False
        )

    def fail(self, path: str, statuses: list[int]) -> None:
        """The next requests to ``path`` are answered with these HTTP statuses (then normally)."""
        with self.lock:
            self.scripted[path] = deque(statuses)

    def received(self, path_prefix: str = "") -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def accepted(self, path_prefix: str = "") -> list[Received]:
        return [r for r in self.received(path_prefix) if r.status == 200 and r.verdict == "ok"]

    def _answer(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], str]:
        with self.lock:
            script = self.scripted.get(path)
            if script:
                status = script.popleft()
                return status, {"error": "scripted"}, f"scripted {status}"
        if path.startswith("/hook"):
            verdict = _verify_webhook(headers, body)
            return (200 if verdict == "ok" else 401), {"ok": verdict == "ok"}, verdict
        if path == "/wecom/send":
            if query.get("key") != [WECOM_KEY]:
                return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}, "bad key"
            doc = json.loads(body)
            if doc.get("msgtype") != "markdown" or len(doc["markdown"]["content"].encode()) > 4096:
                return 200, {"errcode": 40008, "errmsg": "invalid message type"}, "bad message"
            return 200, {"errcode": 0, "errmsg": "ok"}, "ok"
        if path == "/dingtalk/send":
            verdict = _verify_dingtalk(query)
            if verdict != "ok":
                return 200, {"errcode": 310000, "errmsg": verdict}, verdict
            return 200, {"errcode": 0, "errmsg": "ok"}, "ok"
        if path == f"/feishu/hook/{FEISHU_TOKEN}":
            verdict = _verify_feishu(json.loads(body))
            if verdict != "ok":
                return 200, {"code": 19021, "msg": verdict}, verdict
            return 200, {"code": 0, "msg": "success", "data": {}}, "ok"
        return 404, {"error": "not found"}, "not found"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer, verdict = receiver._answer(parts.path, query, headers, body)
                with receiver.lock:
                    receiver.requests.append(
                        Received(parts.path, query, headers, body, time.monotonic(), status, verdict)
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


# --- SMTP server ----------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield SmtpServer(port, mailbox)
    controller.stop()


def windows_exceeding(times: list[float], limit: int, window: timedelta) -> int:
    """How many sliding windows of ``window`` contain more than ``limit`` of the sorted ``times``."""
    ts = sorted(times)
    w = window.total_seconds()
    bad = 0
    j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - w:
            j += 1
        if i - j + 1 > limit:
            bad += 1
    return bad
