"""Channel adapters: signed webhook, WeCom group robot, DingTalk robot, Feishu bot, e-mail.

Each adapter turns one ``OutboundMessage`` into one request and translates failures into the error tree:
``ChannelUnavailable`` (retryable: connection errors, timeouts, HTTP 5xx / 429, a robot's "too many messages")
and ``DeliveryRejected`` (not retryable: other 4xx, bad signature, bad key, refused recipients).

The signing functions are public and pure so that receivers and tests can check them:

- webhook: header ``X-Lianfang-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` with
  ``X-Lianfang-Timestamp`` (unix seconds) and ``X-Lianfang-Delivery`` (message id, for idempotency).
- DingTalk: ``sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp_ms}\\n{secret}")))``, sent as the
  ``timestamp`` and ``sign`` query parameters.
- Feishu: ``sign = base64(HMAC-SHA256(key=f"{timestamp_s}\\n{secret}", msg=b""))``, sent in the JSON body with
  ``timestamp``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol
from urllib.parse import quote_plus

import aiosmtplib
import httpx

from alerts.notify.config import (
    ChannelConfig,
    DingTalkChannelConfig,
    EmailChannelConfig,
    FeishuChannelConfig,
    WebhookChannelConfig,
    WeComChannelConfig,
)
from alerts.notify.routing import Notification
from alerts.notify.templates import Rendered, fmt_time
from alerts.types import alert_doc
from core.errors import LianfangError, Retryable

logger = logging.getLogger(__name__)

USER_AGENT = "lianfang-notify/1"
# Markdown bodies beyond these sizes are refused by the robots; we cut and say so.
WECOM_MAX_BYTES = 4096
DINGTALK_MAX_BYTES = 20000
FEISHU_MAX_BYTES = 30000

# Robot error codes that mean "too many messages, try later".
WECOM_RATE_CODES = frozenset({45009})
DINGTALK_RATE_CODES = frozenset({130101, 660026})
FEISHU_RATE_CODES = frozenset({11232, 9499})


class ChannelUnavailable(Retryable):
    """The channel could not take the message now; the same message may succeed later."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeliveryRejected(LianfangError):
    """The channel refused the message for good (bad key or signature, bad request, refused recipient)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    message_id: str
    rendered: Rendered
    notifications: tuple[Notification, ...]
    language: str
    # More structured content for the signed webhook's body (incident notifications: ``{"incidents": [...]}``).
    extra: Mapping[str, Any] | None = None


class Channel(Protocol):
    name: str

    def send(self, message: OutboundMessage, now: datetime) -> None:
        """Deliver or raise ChannelUnavailable / DeliveryRejected."""
        ...

    def close(self) -> None: ...


# --- signatures (pure) ----------------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The base64 signature (before URL encoding) of DingTalk's 加签 mode."""
    string_to_sign = f"{timestamp_ms}\n{secret}"
    mac = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    string_to_sign = f"{timestamp_s}\n{secret}"
    mac = hmac.new(string_to_sign.encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _cut(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 8].decode(errors="ignore") + "\n……"


def alert_payload(n: Notification) -> dict[str, Any]:
    a = n.alert
    return {
        "kind": n.kind.value,
        "level": n.level,
        "target_region_id": n.target,
        "alert": {**alert_doc(a), "started_at_local": fmt_time(a.started_at)},
    }


# --- HTTP channels --------------------------------------------------------------------------------------


class _HttpChannel:
    def __init__(self, name: str, timeout_s: float, client: httpx.Client | None = None) -> None:
        self.name = name
        # trust_env=False: never route alerts through a proxy picked up from the environment.
        self._client = client or httpx.Client(
            timeout=timeout_s, trust_env=False, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            resp = self._client.post(
                url, content=body, headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})}
            )
        except httpx.TimeoutException as exc:
            raise ChannelUnavailable(f"{self.name}: timed out") from exc
        except httpx.TransportError as exc:
            raise ChannelUnavailable(f"{self.name}: {type(exc).__name__}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ChannelUnavailable(f"{self.name}: HTTP {resp.status_code}", resp.status_code)
        if resp.status_code >= 400:
            raise DeliveryRejected(f"{self.name}: HTTP {resp.status_code}", resp.status_code)
        return resp

    def _robot_result(self, resp: httpx.Response, code_field: str, rate_codes: frozenset[int]) -> None:
        try:
            data = resp.json()
        except ValueError as exc:
            raise ChannelUnavailable(f"{self.name}: answer is not JSON", resp.status_code) from exc
        if not isinstance(data, dict):
            raise ChannelUnavailable(f"{self.name}: unexpected answer", resp.status_code)
        code = data.get(code_field, data.get("StatusCode", 0))
        if code in (0, None):
            return
        msg = str(data.get("errmsg") or data.get("msg") or data.get("StatusMessage") or "")
        if isinstance(code, int) and code in rate_codes:
            raise ChannelUnavailable(f"{self.name}: rate limited ({code} {msg})", resp.status_code)
        raise DeliveryRejected(f"{self.name}: refused ({code} {msg})", resp.status_code)


class WebhookChannel(_HttpChannel):
    def __init__(self, cfg: WebhookChannelConfig, client: httpx.Client | None = None) -> None:
        super().__init__(cfg.name, cfg.timeout_s, client)
        self._url = cfg.url
        self._secret = cfg.secret

    def body(self, message: OutboundMessage) -> bytes:
        doc = {
            "version": 1,
            "message_id": message.message_id,
            "language": message.language,
            "title": message.rendered.title,
            "text": message.rendered.text,
            "markdown": message.rendered.markdown,
            "notifications": [alert_payload(n) for n in message.notifications],
            **(message.extra or {}),
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def send(self, message: OutboundMessage, now: datetime) -> None:
        body = self.body(message)
        ts = str(int(now.timestamp()))
        headers = {
            "X-Lianfang-Timestamp": ts,
            "X-Lianfang-Signature": webhook_signature(self._secret.get_secret_value(), ts, body),
            "X-Lianfang-Delivery": message.message_id,
        }
        self._post(self._url, body, headers)


class WeComChannel(_HttpChannel):
    def __init__(self, cfg: WeComChannelConfig, client: httpx.Client | None = None) -> None:
        super().__init__(cfg.name, cfg.timeout_s, client)
        self._url = cfg.url
        self._key = cfg.key

    def send(self, message: OutboundMessage, now: datetime) -> None:
        doc = {"msgtype": "markdown", "markdown": {"content": _cut(message.rendered.markdown, WECOM_MAX_BYTES)}}
        url = f"{self._url}?key={quote_plus(self._key.get_secret_value())}"
        resp = self._post(url, json.dumps(doc, ensure_ascii=False).encode())
        self._robot_result(resp, "errcode", WECOM_RATE_CODES)


class DingTalkChannel(_HttpChannel):
    def __init__(self, cfg: DingTalkChannelConfig, client: httpx.Client | None = None) -> None:
        super().__init__(cfg.name, cfg.timeout_s, client)
        self._url = cfg.url
        self._token = cfg.access_token
        self._secret = cfg.secret

    def url(self, now: datetime) -> str:
        url = f"{self._url}?access_token={quote_plus(self._token.get_secret_value())}"
        if self._secret is not None:
            ts = int(now.timestamp() * 1000)
            sign = dingtalk_sign(self._secret.get_secret_value(), ts)
            url += f"&timestamp={ts}&sign={quote_plus(sign)}"
        return url

    def send(self, message: OutboundMessage, now: datetime) -> None:
        doc = {
            "msgtype": "markdown",
            "markdown": {
                "title": message.rendered.title,
                "text": _cut(message.rendered.markdown, DINGTALK_MAX_BYTES),
            },
        }
        resp = self._post(self.url(now), json.dumps(doc, ensure_ascii=False).encode())
        self._robot_result(resp, "errcode", DINGTALK_RATE_CODES)


class FeishuChannel(_HttpChannel):
    def __init__(self, cfg: FeishuChannelConfig, client: httpx.Client | None = None) -> None:
        super().__init__(cfg.name, cfg.timeout_s, client)
        self._url = cfg.url.rstrip("/")
        self._token = cfg.hook_token
        self._secret = cfg.secret

    def send(self, message: OutboundMessage, now: datetime) -> None:
        critical = any(n.alert.severity.value == "critical" for n in message.notifications)
        doc: dict[str, Any] = {
            "msg_type": "interactive",
            "card": {
                "header": {
                    "title": {"tag": "plain_text", "content": message.rendered.title},
                    "template": "red" if critical else "orange",
                },
                "elements": [{"tag": "markdown", "content": _cut(message.rendered.markdown, FEISHU_MAX_BYTES)}],
            },
        }
        if self._secret is not None:
            ts = int(now.timestamp())
            doc = {"timestamp": str(ts), "sign": feishu_sign(self._secret.get_secret_value(), ts), **doc}
        url = f"{self._url}/{quote_plus(self._token.get_secret_value())}"
        resp = self._post(url, json.dumps(doc, ensure_ascii=False).encode())
        self._robot_result(resp, "code", FEISHU_RATE_CODES)


# --- e-mail ---------------------------------------------------------------------------------------------


class EmailChannel:
    """Sends a plain-text UTF-8 e-mail with aiosmtplib (one event loop per send, from the worker thread)."""

    def __init__(self, cfg: EmailChannelConfig) -> None:
        self.name = cfg.name
        self._cfg = cfg

    def close(self) -> None:
        return None

    def build(self, message: OutboundMessage, now: datetime) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = message.rendered.title
        msg["From"] = self._cfg.sender
        msg["To"] = ", ".join(self._cfg.recipients)
        msg["Date"] = formatdate(now.timestamp(), localtime=False)
        msg["Message-ID"] = make_msgid(idstring=message.message_id, domain="lianfang.local")
        msg["X-Lianfang-Delivery"] = message.message_id
        msg.set_content(message.rendered.text, charset="utf-8")
        return msg

    def send(self, message: OutboundMessage, now: datetime) -> None:
        cfg = self._cfg
        email = self.build(message, now)
        try:
            asyncio.run(
                aiosmtplib.send(
                    email,
                    hostname=cfg.host,
                    port=cfg.port,
                    username=cfg.username,
                    password=cfg.password.get_secret_value() if cfg.password else None,
                    use_tls=cfg.security == "tls",
                    start_tls=cfg.security == "starttls",
                    timeout=cfg.timeout_s,
                )
            )
        except (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPRecipientsRefused) as exc:
            raise DeliveryRejected(f"{self.name}: {type(exc).__name__}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise DeliveryRejected(f"{self.name}: SMTP {exc.code}", exc.code) from exc
            raise ChannelUnavailable(f"{self.name}: SMTP {exc.code}", exc.code) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ChannelUnavailable(f"{self.name}: {type(exc).__name__}") from exc


def build_channel(cfg: ChannelConfig) -> Channel:
    if isinstance(cfg, WebhookChannelConfig):
        return WebhookChannel(cfg)
    if isinstance(cfg, WeComChannelConfig):
        return WeComChannel(cfg)
    if isinstance(cfg, DingTalkChannelConfig):
        return DingTalkChannel(cfg)
    if isinstance(cfg, FeishuChannelConfig):
        return FeishuChannel(cfg)
    return EmailChannel(cfg)
