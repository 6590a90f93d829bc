"""Notification config: YAML loading, validation errors naming the file and the field path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from alerts.escalation import EscalationPolicy
from alerts.notify.config import ROBOT_RATE_LIMIT, effective_rate_limit, load_notify_config
from alerts.notify.routing import NotificationKind
from alerts.types import Severity
from core.errors import UserError

GOOD = """
channels:
  - name: bldg-1-wecom
    type: wecom
    key: "k-123"
  - name: city-dingtalk
    type: dingtalk
    access_token: "t-456"
    secret: "SEC789"
    language: en
  - name: ops-hook
    type: webhook
    url: https://ops.example.invalid/hooks/lianfang
    secret: "s"
    rate_limit: {messages: 100, per_s: 60, strategy: token_bucket}
  - name: duty-mail
    type: email
    host: smtp.bureau.invalid
    sender: alerts@bureau.invalid
    recipients: [duty@bureau.invalid]
routes:
  - name: building 1
    regions: [bldg-1]
    channels: [bldg-1-wecom, duty-mail]
  - name: city escalations
    regions: [city-1]
    include_subtree: false
    min_severity: major
    rules: ["G*"]
    kinds: [escalated, resolved]
    channels: [city-dingtalk]
escalation:
  default: {after_s: [900, 1800]}
  regions:
    prov: {max_levels: 2}
    city-1: {after_s: [300]}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "notify.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_file_loads_into_routes_channels_and_policies(tmp_path: Path) -> None:
    cfg = load_notify_config(write(tmp_path, GOOD))
    assert [c.name for c in cfg.channels] == ["bldg-1-wecom", "city-dingtalk", "ops-hook", "duty-mail"]
    assert effective_rate_limit(cfg.channel("bldg-1-wecom")) == ROBOT_RATE_LIMIT
    assert effective_rate_limit(cfg.channel("duty-mail")) is None
    hook_limit = effective_rate_limit(cfg.channel("ops-hook"))
    assert hook_limit is not None and hook_limit.strategy == "token_bucket"
    city = cfg.to_routes()[1]
    assert (city.include_subtree, city.min_severity, city.rules) == (False, Severity.MAJOR, ("G*",))
    assert city.kinds == frozenset({NotificationKind.ESCALATED, NotificationKind.RESOLVED})
    policies = cfg.escalation.to_policies()
    assert policies.effective(["prov", "city-1", "bldg-1"]) == EscalationPolicy(
        after=(timedelta(minutes=5),), max_levels=2
    )


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (GOOD.replace('    access_token: "t-456"\n', ""), "channels[1].dingtalk.access_token"),
        (GOOD.replace("[bldg-1-wecom, duty-mail]", "[bldg-1-wecom, nope]"), "routes[0].channels[1]: unknown channel"),
        (GOOD.replace("min_severity: major", "min_severity: huge"), "routes[1].min_severity"),
        (GOOD.replace("after_s: [300]", "after_s: [-1]"), "escalation.regions.city-1.after_s"),
        (GOOD.replace("recipients: [duty@bureau.invalid]", "recipients: [duty]"), "channels[3].email.recipients"),
        (GOOD.replace("https://ops.example.invalid", "ftp://ops"), "channels[2].webhook.url"),
        (GOOD.replace("name: city-dingtalk", "name: bldg-1-wecom"), "duplicate channel name(s) bldg-1-wecom"),
        (GOOD.replace("type: wecom", "type: pager"), "channels[0]"),
    ],
)
def test_bad_file_names_the_file_and_the_field(tmp_path: Path, bad: str, where: str) -> None:
    path = write(tmp_path, bad)
    with pytest.raises(UserError) as err:
        load_notify_config(path)
    assert str(path) in str(err.value)
    assert where in str(err.value)


def test_not_yaml_and_missing_file_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not valid YAML at line 3") as err:
        load_notify_config(write(tmp_path, 'channels:\n  - name: a\n  key: "SECRET-VALUE" x: 1\n'))
    assert "SECRET-VALUE" not in str(err.value)  # the offending line is not echoed
    with pytest.raises(UserError, match="cannot read"):
        load_notify_config(tmp_path / "missing.yaml")


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('secret: "SEC789"', 'secret: "SEC789"\n    bogus: 1'))
    with pytest.raises(UserError) as err:
        load_notify_config(path)
    assert "channels[1].dingtalk.bogus" in str(err.value)
    assert "SEC789" not in str(err.value) and "t-456" not in str(err.value)
