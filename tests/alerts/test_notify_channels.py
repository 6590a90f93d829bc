"""Channel adapters against real local receivers (127.0.0.1 only): an HTTP server that checks each request the
way WeCom, DingTalk, Feishu and a webhook consumer do, and an aiosmtpd SMTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence

import pytest

from alerts.notify.channels import (
    ChannelUnavailable,
    DeliveryRejected,
    DingTalkChannel,
    EmailChannel,
    FeishuChannel,
    OutboundMessage,
    WebhookChannel,
    WeComChannel,
)
from alerts.notify.config import (
    DingTalkChannelConfig,
    EmailChannelConfig,
    FeishuChannelConfig,
    WebhookChannelConfig,
    WeComChannelConfig,
)
from alerts.notify.routing import Notification, NotificationKind
from alerts.notify.templates import Language, Renderer
from core import clock
from devices.broker import free_port
from tests.alerts.notify_fixtures import (
    DINGTALK_SECRET,
    DINGTALK_TOKEN,
    FEISHU_SECRET,
    FEISHU_TOKEN,
    T0,
    WEBHOOK_SECRET,
    WECOM_KEY,
    Receiver,
    SmtpServer,
    make_alert,
    receiver,  # noqa: F401  (fixture)
    smtp_server,  # noqa: F401  (fixture)
)
from tests.helpers import wait_until


def message(ids: Sequence[int] = (1,), language: Language = "zh-CN") -> OutboundMessage:
    ns = tuple(Notification(NotificationKind.FIRING, make_alert(i), T0) for i in ids)
    return OutboundMessage(uuid.uuid4().hex, Renderer(language).render(ns), ns, language)


def test_webhook_is_signed_with_hmac_over_timestamp_and_body(receiver: Receiver) -> None:  # noqa: F811
    ch = WebhookChannel(
        WebhookChannelConfig(name="hook", type="webhook", url=f"{receiver.base}/hook", secret=WEBHOOK_SECRET)
    )
    msg = message((1, 2))
    ch.send(msg, clock.now())
    ch.close()
    [req] = receiver.received("/hook")
    assert (req.status, req.verdict) == (200, "ok")
    ts = req.headers["x-lianfang-timestamp"]
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{ts}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-lianfang-signature"] == f"sha256={expected}"
    assert req.headers["x-lianfang-delivery"] == msg.message_id
    doc = req.json()
    assert [n["alert"]["id"] for n in doc["notifications"]] == [1, 2]
    assert doc["title"] == "【联防】2 条告警通知"


def test_webhook_with_a_wrong_secret_is_rejected_for_good(receiver: Receiver) -> None:  # noqa: F811
    ch = WebhookChannel(WebhookChannelConfig(name="hook", type="webhook", url=f"{receiver.base}/hook", secret="nope"))
    with pytest.raises(DeliveryRejected) as err:
        ch.send(message(), clock.now())
    ch.close()
    assert err.value.status == 401
    assert receiver.received("/hook")[0].verdict == "bad signature"


def test_wecom_robot_gets_a_markdown_message(receiver: Receiver) -> None:  # noqa: F811
    ch = WeComChannel(WeComChannelConfig(name="w", type="wecom", url=f"{receiver.base}/wecom/send", key=WECOM_KEY))
    ch.send(message((5,)), clock.now())
    ch.close()
    [req] = receiver.accepted("/wecom")
    doc = req.json()
    assert doc["msgtype"] == "markdown"
    content = doc["markdown"]["content"]
    assert content.startswith("### 【紧急】新告警：门禁被强行打开")
    assert "- 设备：dev-5" in content and "- 开始时间：2026-11-26 14:00:00" in content and "#5" in content


def test_wecom_bad_key_is_rejected(receiver: Receiver) -> None:  # noqa: F811
    ch = WeComChannel(WeComChannelConfig(name="w", type="wecom", url=f"{receiver.base}/wecom/send", key="wrong"))
    with pytest.raises(DeliveryRejected, match="93000"):
        ch.send(message(), clock.now())
    ch.close()


def test_dingtalk_signature_is_accepted_as_dingtalk_checks_it(receiver: Receiver) -> None:  # noqa: F811
    cfg = DingTalkChannelConfig(
        name="d",
        type="dingtalk",
        url=f"{receiver.base}/dingtalk/send",
        access_token=DINGTALK_TOKEN,
        secret=DINGTALK_SECRET,
    )
    ch = DingTalkChannel(cfg)
    ch.send(message((3,), "en"), clock.now())
    ch.close()
    [req] = receiver.received("/dingtalk")
    assert req.verdict == "ok", req.verdict
    assert set(req.query) == {"access_token", "timestamp", "sign"}
    doc = req.json()
    assert doc["msgtype"] == "markdown"
    assert doc["markdown"]["title"] == "[CRITICAL] New alert: Door forced open"
    assert "Device: dev-3" in doc["markdown"]["text"]


def test_dingtalk_wrong_secret_fails_the_signature_check(receiver: Receiver) -> None:  # noqa: F811
    cfg = DingTalkChannelConfig(
        name="d", type="dingtalk", url=f"{receiver.base}/dingtalk/send", access_token=DINGTALK_TOKEN, secret="SECx"
    )
    ch = DingTalkChannel(cfg)
    with pytest.raises(DeliveryRejected, match="310000"):
        ch.send(message(), clock.now())
    ch.close()


def test_feishu_signature_is_accepted_as_feishu_checks_it(receiver: Receiver) -> None:  # noqa: F811
    cfg = FeishuChannelConfig(
        name="f", type="feishu", url=f"{receiver.base}/feishu/hook", hook_token=FEISHU_TOKEN, secret=FEISHU_SECRET
    )
    ch = FeishuChannel(cfg)
    ch.send(message((8, 9)), clock.now())
    ch.close()
    [req] = receiver.received("/feishu")
    assert req.verdict == "ok", req.verdict
    doc = req.json()
    assert doc["msg_type"] == "interactive" and {"timestamp", "sign"} <= set(doc)
    assert req.alert_ids() == [8, 9]
    assert doc["card"]["header"]["title"]["content"] == "【联防】2 条告警通知"


def test_feishu_wrong_secret_fails_the_signature_check(receiver: Receiver) -> None:  # noqa: F811
    cfg = FeishuChannelConfig(
        name="f", type="feishu", url=f"{receiver.base}/feishu/hook", hook_token=FEISHU_TOKEN, secret="other"
    )
    ch = FeishuChannel(cfg)
    with pytest.raises(DeliveryRejected, match="19021"):
        ch.send(message(), clock.now())
    ch.close()


def test_server_errors_and_refused_connections_are_retryable(receiver: Receiver) -> None:  # noqa: F811
    receiver.fail("/wecom/send", [503])
    ch = WeComChannel(WeComChannelConfig(name="w", type="wecom", url=f"{receiver.base}/wecom/send", key=WECOM_KEY))
    with pytest.raises(ChannelUnavailable) as err:
        ch.send(message(), clock.now())
    assert err.value.status == 503
    ch.send(message(), clock.now())  # the next one goes through
    ch.close()
    closed = WeComChannel(
        WeComChannelConfig(name="w", type="wecom", url=f"http://127.0.0.1:{free_port()}/wecom/send", key=WECOM_KEY)
    )
    with pytest.raises(ChannelUnavailable):
        closed.send(message(), clock.now())
    closed.close()


def test_robot_rate_limit_answer_is_retryable(receiver: Receiver) -> None:  # noqa: F811
    cfg = WeComChannelConfig(name="w", type="wecom", url=f"{receiver.base}/wecom/send", key=WECOM_KEY)
    receiver.fail("/wecom/send", [429])
    ch = WeComChannel(cfg)
    with pytest.raises(ChannelUnavailable):
        ch.send(message(), clock.now())
    ch.close()


def _email(smtp: SmtpServer, language: Language) -> EmailChannel:
    return EmailChannel(
        EmailChannelConfig(
            name="mail",
            type="email",
            host="127.0.0.1",
            port=smtp.port,
            security="none",
            sender="alerts@lianfang.local",
            recipients=["duty@bureau.local", "chief@bureau.local"],
            language=language,
        )
    )


def test_email_in_chinese_by_default(smtp_server: SmtpServer) -> None:  # noqa: F811
    _email(smtp_server, "zh-CN").send(message((4,)), clock.now())
    wait_until(lambda: smtp_server.mailbox.messages, 5, what="mail received")
    [mail] = smtp_server.mailbox.messages
    assert mail["Subject"] == "【紧急】新告警：门禁被强行打开"
    body = mail.get_content()
    assert "设备：dev-4" in body and "区域：bldg-1" in body and "开始时间：2026-11-26 14:00:00" in body
    assert smtp_server.mailbox.envelopes == [("alerts@lianfang.local", ["duty@bureau.local", "chief@bureau.local"])]


def test_email_in_english_when_configured(smtp_server: SmtpServer) -> None:  # noqa: F811
    _email(smtp_server, "en").send(message((4, 6), "en"), clock.now())
    wait_until(lambda: smtp_server.mailbox.messages, 5, what="mail received")
    [mail] = smtp_server.mailbox.messages
    assert mail["Subject"] == "[Lianfang] 2 alert notifications"
    body = mail.get_content()
    assert "2 new, 0 escalated" in body and "[CRITICAL] New alert: Door forced open · dev-6" in body
    assert "门禁" not in body


def test_email_to_a_closed_port_is_retryable() -> None:
    ch = EmailChannel(
        EmailChannelConfig(
            name="mail",
            type="email",
            host="127.0.0.1",
            port=free_port(),
            security="none",
            sender="a@b.c",
            recipients=["d@e.f"],
            timeout_s=2,
        )
    )
    with pytest.raises(ChannelUnavailable):
        ch.send(message(), clock.now())


def test_secrets_do_not_show_in_config_repr() -> None:
    cfg = DingTalkChannelConfig(name="d", type="dingtalk", access_token=DINGTALK_TOKEN, secret=DINGTALK_SECRET)
    text = repr(cfg) + str(cfg) + json.dumps(cfg.model_dump(mode="json"))
    assert DINGTALK_TOKEN not in text and DINGTALK_SECRET not in text
