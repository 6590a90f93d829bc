"""Notification configuration: channels, routes, escalation, retries; loaded from YAML.

Example (docs/notifications.md has the full reference)::

    channels:
      - name: bldg-1-wecom
        type: wecom
        key: "..."                 # the robot's webhook key (a secret)
      - name: city-dingtalk
        type: dingtalk
        access_token: "..."
        secret: "SEC..."
    routes:
      - name: building-1 duty
        regions: [bldg-1]
        channels: [bldg-1-wecom]
      - name: city escalations
        regions: [city-1]
        include_subtree: false
        kinds: [escalated, resolved, renotify]
        channels: [city-dingtalk]
    escalation:
      default: {after_s: [900, 1800]}
      regions:
        prov-1: {max_levels: 2}

A bad file raises ``UserError`` naming the file and the field path of every problem.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from alerts.notify.routing import NotificationKind, RetryPolicy, Route
from alerts.types import Severity
from core.errors import UserError

if TYPE_CHECKING:  # alerts.escalation imports alerts.notify.routing; import it lazily to avoid a cycle
    from alerts.escalation import EscalationPolicies, EscalationPolicy, PolicyOverride

Language = Literal["zh-CN", "en"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    messages: int = Field(default=20, ge=1)
    per_s: float = Field(default=60.0, gt=0)
    # "window": at most `messages` in any `per_s` seconds (the robots' rule); "token_bucket": a burst of
    # `messages`, then `messages / per_s` per second on average.
    strategy: Literal["window", "token_bucket"] = "window"


ROBOT_RATE_LIMIT = RateLimitConfig(messages=20, per_s=60.0)


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return v


class _ChannelBase(_Model):
    name: str = Field(min_length=1, max_length=64)
    language: Language = "zh-CN"
    # Notifications arriving within this many seconds of the first pending one go out as one message.
    group_window_s: float = Field(default=5.0, ge=0)
    # At most this many alerts in one message; a longer backlog goes out in several messages.
    max_group: int = Field(default=20, ge=1, le=200)
    rate_limit: RateLimitConfig | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


class WebhookChannelConfig(_ChannelBase):
    """Generic JSON webhook; signed with HMAC-SHA256 over ``timestamp + "." + body``."""

    type: Literal["webhook"]
    url: str
    secret: SecretStr


class WeComChannelConfig(_ChannelBase):
    """WeCom (企业微信) group robot: POST {url}?key={key}, markdown message."""

    type: Literal["wecom"]
    url: str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    key: SecretStr


class DingTalkChannelConfig(_ChannelBase):
    """DingTalk (钉钉) custom robot; signed (加签) when ``secret`` is set."""

    type: Literal["dingtalk"]
    url: str = "https://oapi.dingtalk.com/robot/send"
    access_token: SecretStr
    secret: SecretStr | None = None


class FeishuChannelConfig(_ChannelBase):
    """Feishu (飞书) custom bot: POST {url}/{hook_token}; signed when ``secret`` is set."""

    type: Literal["feishu"]
    url: str = "https://open.feishu.cn/open-apis/bot/v2/hook"
    hook_token: SecretStr
    secret: SecretStr | None = None


class EmailChannelConfig(_ChannelBase):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(min_length=3)
    recipients: list[str] = Field(min_length=1)

    @field_validator("sender", "recipients")
    @classmethod
    def _addresses(cls, v: Any) -> Any:
        for addr in [v] if isinstance(v, str) else v:
            if "@" not in addr:
                raise ValueError(f"{addr!r} is not an e-mail address")
        return v


ChannelConfig = Annotated[
    WebhookChannelConfig | WeComChannelConfig | DingTalkChannelConfig | FeishuChannelConfig | EmailChannelConfig,
    Field(discriminator="type"),
]

ROBOT_TYPES = frozenset({"wecom", "dingtalk", "feishu"})


def effective_rate_limit(channel: ChannelConfig) -> RateLimitConfig | None:
    """The channel's limit; robots get 20 a minute unless configured otherwise."""
    if channel.rate_limit is not None:
        return channel.rate_limit
    return ROBOT_RATE_LIMIT if channel.type in ROBOT_TYPES else None


class RouteConfig(_Model):
    name: str
    channels: list[str] = Field(min_length=1)
    regions: list[str] = []
    include_subtree: bool = True
    min_severity: Severity = Severity.INFO
    rules: list[str] = []
    kinds: list[NotificationKind] = list(NotificationKind)
    # Incidents (joint/notify.py) go to the routes whose regions cover the incident's region, at or above
    # min_severity, ``rules`` matched against the pattern id; false: this route carries alerts only.
    incidents: bool = True

    def to_route(self) -> Route:
        return Route(
            name=self.name,
            channels=tuple(self.channels),
            regions=tuple(self.regions),
            include_subtree=self.include_subtree,
            min_severity=self.min_severity,
            rules=tuple(self.rules),
            kinds=frozenset(self.kinds),
        )


class EscalationPolicyConfig(_Model):
    enabled: bool = True
    after_s: list[float] = Field(default=[900.0], min_length=1)
    max_levels: int | None = Field(default=None, ge=0)
    min_severity: Severity = Severity.WARNING

    @field_validator("after_s")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("every delay must be > 0 seconds")
        return v

    def to_policy(self) -> EscalationPolicy:
        from alerts.escalation import EscalationPolicy

        return EscalationPolicy(
            enabled=self.enabled,
            after=tuple(timedelta(seconds=s) for s in self.after_s),
            max_levels=self.max_levels,
            min_severity=self.min_severity,
        )


class EscalationOverrideConfig(_Model):
    enabled: bool | None = None
    after_s: list[float] | None = Field(default=None, min_length=1)
    max_levels: int | None = Field(default=None, ge=0)
    min_severity: Severity | None = None

    @field_validator("after_s")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(x <= 0 for x in v):
            raise ValueError("every delay must be > 0 seconds")
        return v

    def to_override(self) -> PolicyOverride:
        from alerts.escalation import PolicyOverride

        return PolicyOverride(
            enabled=self.enabled,
            after=None if self.after_s is None else tuple(timedelta(seconds=s) for s in self.after_s),
            max_levels=self.max_levels,
            min_severity=self.min_severity,
        )


class EscalationConfig(_Model):
    default: EscalationPolicyConfig = EscalationPolicyConfig()
    regions: dict[str, EscalationOverrideConfig] = {}

    def to_policies(self) -> EscalationPolicies:
        from alerts.escalation import EscalationPolicies

        return EscalationPolicies(
            default=self.default.to_policy(),
            overrides={rid: o.to_override() for rid, o in self.regions.items()},
        )


class RetryConfig(_Model):
    max_attempts: int = Field(default=6, ge=1, le=50)
    base_s: float = Field(default=1.0, gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_delay_s: float = Field(default=300.0, gt=0)

    def to_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base=timedelta(seconds=self.base_s),
            factor=self.factor,
            max_delay=timedelta(seconds=self.max_delay_s),
        )


class DepartmentConfig(_Model):
    """A department's own channels for its incident tasks (X10): ``security`` -> the security office's robot.
    ``regions`` (empty: everywhere) limits the entry to tasks of incidents in those subtrees, so each city's
    department can have its own channel."""

    department: str = Field(min_length=1, max_length=64)
    channels: list[str] = Field(min_length=1)
    regions: list[str] = []


class NotifyConfig(_Model):
    channels: list[ChannelConfig] = []
    routes: list[RouteConfig] = []
    departments: list[DepartmentConfig] = []
    escalation: EscalationConfig = EscalationConfig()
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channels: duplicate channel name(s) {', '.join(dupes)}")
        known = set(names)
        for i, route in enumerate(self.routes):
            for j, ch in enumerate(route.channels):
                if ch not in known:
                    raise ValueError(f"routes[{i}].channels[{j}]: unknown channel {ch!r}")
        for i, dept in enumerate(self.departments):
            for j, ch in enumerate(dept.channels):
                if ch not in known:
                    raise ValueError(f"departments[{i}].channels[{j}]: unknown channel {ch!r}")
        return self

    def channel(self, name: str) -> ChannelConfig:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_routes(self) -> list[Route]:
        return [r.to_route() for r in self.routes]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(root)"


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid notification config in {origin}:"]
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"  {_loc(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def parse_notify_config(data: Any, origin: str = "<data>") -> NotifyConfig:
    try:
        return NotifyConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, origin)) from exc


def load_notify_config(path: Path) -> NotifyConfig:
    """Read and validate a notification config file; ``UserError`` names the file and each field path."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read notification config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        # Name the place but do not echo the line: it may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"notification config {path} is not valid YAML{where}: {problem}") from exc
    if data is not None and not isinstance(data, dict):
        raise UserError(f"notification config {path}: the top level must be a mapping")
    return parse_notify_config(data, str(path))
