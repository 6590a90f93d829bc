"""Settings, validated at start-up.

Every value can come from the environment (``LIANFANG_`` prefix, ``__`` for nesting, e.g.
``LIANFANG_MQTT__PORT=1884``) or from a YAML config file named by ``LIANFANG_CONFIG`` or ``--config``.
Environment variables win over the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import UserError


class _Section(BaseModel):
    """A nested settings section; an unknown key (a typo in the config file) is an error naming its path."""

    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1884, ge=1, le=65535)
    username: str = "lianfang-platform"
    password: SecretStr = SecretStr("dev-only-platform-secret")
    client_id: str = "lianfang-ingest"
    # Shared subscription group; several ingest processes with the same group split the load.
    shared_group: str | None = None
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    receive_maximum: int = Field(default=2000, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5)
    tls_ca: Path | None = None
    # The embedded broker also serves MQTT over TLS on this port, with the files of 'lianfang certs init'
    # (ca.crt, server.crt, server.key in tls_dir, default DATA_DIR/certs).
    tls_port: int | None = Field(default=None, ge=1, le=65535)
    # Default: DATA_DIR/certs (follows data_dir unless set).
    tls_dir: Path | None = None
    # The dynamic-security admin account (device provisioning). None: the embedded broker's generated one.
    admin_password: SecretStr | None = None
    # Start Mosquitto as a child process with generated config (one-machine mode).
    embedded_broker: bool = True
    # Default: DATA_DIR/mosquitto (follows data_dir unless set); the broker's generated passwords are kept next to
    # it, in broker-secrets.json.
    broker_dir: Path = Path("var/mosquitto")
    # The embedded broker's persistence (devices/broker.py, docs/reliability.md): save every this many seconds, or
    # with broker_autosave_on_changes every this many changes.
    broker_autosave_interval: int = Field(default=1, ge=1)
    broker_autosave_on_changes: bool = False
    # Where device identities live (docs/adr/0006-live-provisioning.md). "password_file" (the default with the
    # embedded broker, ADR 0006): a Mosquitto password file with pattern ACLs, reloaded live, so thousands of
    # devices are added to a running broker in seconds; devices connect to their own listener on device_port. "dynsec"
    # (the default with an external broker, embedded_broker: false, unless set): dynamic-security clients, each
    # change rewriting the whole dynsec file (a live import is quadratic in the fleet); devices connect to `port`.
    device_identities: Literal["dynsec", "password_file"] = "password_file"
    # With device_identities: password_file, devices connect to their own listener on this port (default: port + 1):
    # it knows only device accounts (the password file and pattern ACLs) and replaces every client id with the
    # username (use_username_as_clientid), so no device can take another's client id; the platform's listener on
    # `port` knows only the platform accounts (dynsec). Unused with dynsec (devices use `port`).
    device_port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _identities_follow_the_broker(self) -> MqttSettings:
        """Unless set, an external broker keeps device identities in dynsec: its password file is reloaded only by
        a watcher on the broker's side (compose's docker/mosquitto/run.sh), which a plain broker does not have.

        Replaced without marking it as set (as Settings' data_dir defaults), so the environment layered over the
        config file (``model_dump(exclude_unset=True)``) still leaves it out and the final embedded_broker decides."""
        if "device_identities" not in self.model_fields_set and not self.embedded_broker:
            object.__setattr__(self, "device_identities", "dynsec")
        return self

    @property
    def device_listener_port(self) -> int:
        """The port devices connect to (and where device logins are verified)."""
        if self.device_identities != "password_file":
            return self.port
        return self.device_port if self.device_port is not None else self.port + 1


class StoreSettings(_Section):
    # Telemetry store adapter (docs/influxdb.md): the embedded SQLite store (sqlite_path), or InfluxDB (writes on
    # /api/v2/write, reads in InfluxQL on /query through the DBRP mapping named influx_database; device states,
    # counters and rejections in the SQL database of database_url).
    backend: Literal["sqlite", "influxdb"] = "sqlite"
    # Default: DATA_DIR/telemetry.db (follows data_dir unless set). Used by the sqlite backend, and as the source
    # of 'lianfang store migrate --to influxdb'.
    sqlite_path: Path = Path("var/telemetry.db")
    retention_days: int = Field(default=400, ge=1)
    influx_url: str = "http://127.0.0.1:8086"
    influx_org: str = "lianfang"
    influx_bucket: str = "telemetry"
    influx_token: SecretStr = SecretStr("")
    influx_database: str = "telemetry"
    # InfluxDB backend: 0 writes each batch's per-device counters, last-seen times and statuses to the side store
    # (telemetry_device_state) with the batch; > 0 adds the counters and last-seen times up in memory per ingest
    # process and flushes them every that many seconds (30 in the national plan, with EMQX hash_clientid):
    # rows/s bounded by devices per interval, at the price of up to one interval of counts lost in a crash and
    # last-seen times up to one interval late for other processes (docs/scaling.md "PostgreSQL primary and
    # replicas"). Keep it below 1.5 times the shortest expected device interval (the API's online state).
    side_flush_interval_s: float = Field(default=0.0, ge=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        """Settings of earlier versions, refused with what replaced them (rather than "extra inputs")."""
        if isinstance(data, dict):
            for key, message in REMOVED_STORE_KEYS.items():
                if key in data:
                    raise ValueError(message)
        return data


# store.<key> of earlier versions -> why it is refused and what to set instead (docs/influxdb.md "Upgrading").
REMOVED_STORE_KEYS: dict[str, str] = {
    "kind": (
        "store.kind (LIANFANG_STORE__KIND) was replaced by store.backend (LIANFANG_STORE__BACKEND: sqlite or "
        "influxdb); it was one choice under two names: remove store.kind and set store.backend"
    ),
    "influx_side_path": (
        "store.influx_side_path (LIANFANG_STORE__INFLUX_SIDE_PATH) was removed: with the InfluxDB backend, device "
        "states, counters and rejections live in the SQL database of database_url (shared by every ingest "
        "process); remove it, and copy an old side file once with 'lianfang store migrate --to influxdb "
        "--source FILE --no-verify'"
    ),
}


class AuditSettings(_Section):
    """The hash-chained audit log (devices/audit.py, docs/security.md "Audit")."""

    # The chain head (seq and hash) written to the log and the metrics this often by lianfang serve; 0: never.
    anchor_minutes: float = Field(default=15.0, ge=0, le=7 * 24 * 60)


class IngestSettings(_Section):
    batch_size: int = Field(default=1000, ge=1)
    # 0: write what has arrived, at once; the next batch grows while this one is written (group commit). A wait
    # fills batches under light load, at the price of that much latency for every message and alert.
    batch_wait_ms: int = Field(default=0, ge=0)
    registry_refresh_s: float = Field(default=5.0, gt=0)
    # /health/ready answers 503 (and the platform alert "ingest stalled" fires) when the oldest unacknowledged
    # message is older than this, or the writer has spent this long on one batch.
    stall_after_s: float = Field(default=30.0, gt=0)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_points: int = Field(default=10000, ge=1)
    max_range_days: int = Field(default=92, ge=1)
    # Live streams (SSE) open at once, per API user (token) and for the whole server; one more is a 429.
    stream_max_per_user: int = Field(default=5, ge=1)
    stream_max_total: int = Field(default=200, ge=1)
    # The longest silence (ends_at - starts_at) each role may create, in hours (docs/security.md "Guarded powers").
    silence_max_hours_operator: float = Field(default=24.0, gt=0)
    silence_max_hours_admin: float = Field(default=30 * 24.0, gt=0)
    # The page's map (docs/control-room.md): an optional tile server of the operator's own network, a URL template
    # with {z}, {x} and {y}, e.g. http://tiles.intranet/{z}/{x}/{y}.png. None: the map is drawn from the region
    # and building coordinates alone. When set, the page's CSP allows images from that origin only.
    map_tile_url: str | None = None

    @field_validator("map_tile_url")
    @classmethod
    def _tile_template(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.match(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/", v):
            raise ValueError(
                "must be an http:// or https:// URL with a host and a path, e.g. http://tiles/{z}/{x}/{y}.png"
            )
        if any(p not in v for p in ("{z}", "{x}", "{y}")) or any(c in v for c in "'\" ;,"):
            raise ValueError("must contain {z}, {x} and {y} and no quote, space, semicolon or comma")
        return v


class ResendSettings(_Section):
    """Gaps in a device's seq asked back with the ``resend`` command (PROTOCOL.md v1.1, ``ingest/resend.py``)."""

    enabled: bool = True
    # A gap stays open this long before it is asked for (records of a broker backlog may arrive out of order).
    settle_s: float = Field(default=5.0, ge=0)
    # No cmd_result within this: ask again, at most max_attempts commands per gap, then it counts as lost.
    answer_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # Missing seqs tracked per device; a larger jump is counted lost at once, without asking.
    max_gap: int = Field(default=100_000, ge=1)
    commands_per_s: float = Field(default=50.0, gt=0)


class AlertSettings(_Section):
    """The alert engine and notifications (``alerts.wiring.AlertsRuntime``)."""

    enabled: bool = True
    # User rule files or directories (*.yaml), loaded after the built-in packs (alerts/packs).
    rules_paths: list[Path] = []
    # Notification channels, routes and escalation (YAML, docs/notifications.md). None: no channels; alerts
    # are still evaluated and stored.
    notify_config: Path | None = None
    tick_interval_s: float = Field(default=1.0, gt=0)
    escalation_tick_s: float = Field(default=5.0, gt=0)
    # Warn (rule CRED1) when a device's broker credential expires within this many days; checked hourly.
    credential_warning_days: int = Field(default=14, ge=0)
    credential_check_s: float = Field(default=3600.0, gt=0)
    # Where ingest's batches are evaluated (docs/scaling.md "The alert and joint-control engine as its own role"):
    # "separate": ingest forwards them over the broker (lf/internal/v1/engine/<k>) to the engine role, and
    # `lianfang serve` runs ingest as its child process; "inline": in ingest's own process (one GIL).
    engine: Literal["separate", "inline"] = "separate"
    # Engine partitions: a region's subtree at partition_level (1: the root, e.g. the province) goes to one.
    partitions: int = Field(default=1, ge=1, le=64)
    partition_level: int = Field(default=1, ge=1, le=8)
    # The partitions this engine process consumes (`lianfang alerts`); empty: all.
    engine_partitions: list[int] = []
    # The engine's persistent MQTT session; default "lianfang-engine" (with its partitions when not all).
    engine_client_id: str | None = None
    # /health/ready fails and the platform alert "alert engine stalled" fires past this lag.
    engine_stall_after_s: float = Field(default=30.0, gt=0)


class RiskSettings(_Section):
    """Region risk (``joint/risk.py``, docs/risk.md): weights of the score, roll-up, history."""

    # Points per open item by severity (alerts use their severity; incidents theirs, times incident_factor).
    weight_critical: float = Field(default=10.0, ge=0, le=1e6)
    weight_major: float = Field(default=5.0, ge=0, le=1e6)
    weight_warning: float = Field(default=2.0, ge=0, le=1e6)
    weight_info: float = Field(default=0.5, ge=0, le=1e6)
    # An incident stands for correlated evidence: worth this many alerts of its severity.
    incident_factor: float = Field(default=2.0, ge=0, le=1e3)
    # Someone is on it: an acknowledged alert (or an investigating incident) counts this much.
    acknowledged_factor: float = Field(default=0.5, ge=0, le=1)
    # Age: an item counts 1 + age_h / age_growth_h, at most age_cap (an unhandled item grows more pressing).
    age_growth_h: float = Field(default=4.0, gt=0, le=1e5)
    age_cap: float = Field(default=3.0, ge=1, le=1e3)
    # Roll-up: parent = own + max(child) + rollup_spread * (sum(children) - max(child)); 1 = sum, 0 = max.
    rollup_spread: float = Field(default=0.5, ge=0, le=1)
    # Bounds: open alerts and incidents read per computation (newest first), contributors listed per region.
    max_items: int = Field(default=50_000, ge=1, le=1_000_000)
    top_contributors: int = Field(default=5, ge=0, le=100)
    # History (table region_risk_history): a snapshot every this many seconds, kept this many days, at most
    # this many regions per snapshot (highest scores first; a region that fell to 0 is written once as 0).
    snapshot_interval_s: float = Field(default=300.0, ge=10, le=86_400)
    history_days: int = Field(default=30, ge=1, le=3660)
    history_max_regions: int = Field(default=5000, ge=1, le=1_000_000)
    # Statistics: at most this many alerts / incidents / tasks read per query; more is answered as truncated.
    stats_max_rows: int = Field(default=200_000, ge=1, le=10_000_000)


class JointSettings(_Section):
    """Joint prevention and control (``joint/``, docs/joint.md): correlation patterns, incidents, tasks."""

    enabled: bool = True  # run the correlator with the alert engine (lianfang serve / alerts)
    packs: bool = True  # load the default X patterns (joint/packs/joint.yaml) before patterns_paths
    patterns_paths: list[Path] = Field(default_factory=list)  # pattern files or directories of *.yaml
    tick_interval_s: float = Field(default=1.0, gt=0, le=3600)  # absence watches, escalation, overdue tasks
    snapshot_interval_s: float = Field(default=5.0, gt=0, le=3600)  # windows written at most this often


class AuthSettings(_Section):
    """People who log in (gateway/auth.py, docs/security.md "People and roles"): sessions, lockout, TOTP."""

    session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)  # a login session's lifetime
    session_sliding: bool = True  # each use moves the expiry to now + session_minutes; False: fixed from login
    lockout_failures: int = Field(default=5, ge=1, le=1000)  # failed logins in a row that lock the account
    lockout_minutes: int = Field(default=15, ge=1, le=7 * 24 * 60)  # how long a locked account stays locked
    token_use_audit_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)  # token use audited once per
    totp_required_for_admins: bool = False  # administrators (admin, sysadmin, secadmin) must log in with TOTP


class ReportScheduleSettings(_Section):
    """One scheduled report (docs/reports.md "Schedules"): built at ``cron`` (Beijing time) and delivered."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["vehicles", "energy", "coverage", "scorecard"]
    region: str = Field(min_length=2, max_length=64)
    period: str = Field(default="7d", min_length=2, max_length=32)  # reports/period.py, relative to the run
    cron: str = Field(min_length=9, max_length=120)  # "minute hour day month day-of-week", Beijing time
    channels: list[str] = Field(min_length=1, max_length=20)  # channel names of alerts.notify_config
    format: Literal["html", "pdf", "csv", "json"] = "html"  # what e-mail attaches
    lang: Literal["zh", "en"] = "zh"

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        from datetime import UTC, datetime

        from reports.period import parse_period

        try:
            parse_period(v, datetime(2026, 1, 1, tzinfo=UTC))
        except UserError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from reports.schedule import cron_trigger

        cron_trigger(v)  # ValueError naming the bad field
        return v


class ReportSettings(_Section):
    """Reports (reports/, docs/reports.md): scheduled deliveries."""

    schedules: list[ReportScheduleSettings] = Field(default_factory=list, max_length=200)
    # The page's address as people reach it (e.g. https://lianfang.example.gov.cn): IM messages link the report.
    link_base: str | None = Field(default=None, max_length=300, pattern=r"^https?://\S+$")

    @field_validator("schedules")
    @classmethod
    def _unique(cls, v: list[ReportScheduleSettings]) -> list[ReportScheduleSettings]:
        names = [x.name for x in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate schedule name(s) {', '.join(dupes)}")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIANFANG_", env_nested_delimiter="__", extra="forbid")

    env: Literal["dev", "prod"] = "dev"
    # Every default path below derives from it (store.sqlite_path, database_url, mqtt.broker_dir, mqtt.tls_dir):
    # a second data dir is a second, independent installation. A path set explicitly is kept.
    data_dir: Path = Path("var")
    # Default: sqlite:///DATA_DIR/registry.db.
    database_url: str = "sqlite:///var/registry.db"
    # Optional PostgreSQL streaming replica of database_url (docs/scaling.md "PostgreSQL primary and replicas"):
    # the API's read-only requests (lists, details, reports, statistics, overview, audit reads) use it; writes,
    # logins and token checks, the same user's reads for 5 s after a write, and the engines use database_url.
    # Unreachable or more than 30 s behind: reads fall back to database_url (a warning, a note in /health/ready).
    database_read_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Long-lived objects out of the full garbage collections (core/gcpolicy.py): at start-up and then every this
    # many seconds. 0 turns it off.
    gc_settle_s: float = Field(default=600.0, ge=0)
    mqtt: MqttSettings = MqttSettings()
    audit: AuditSettings = AuditSettings()
    store: StoreSettings = StoreSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    alerts: AlertSettings = AlertSettings()
    resend: ResendSettings = ResendSettings()
    risk: RiskSettings = RiskSettings()
    joint: JointSettings = JointSettings()
    auth: AuthSettings = AuthSettings()
    reports: ReportSettings = ReportSettings()

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return v

    @field_validator("database_read_url")
    @classmethod
    def _read_replica(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith("postgresql"):
            raise ValueError("must be a postgresql+psycopg:// URL of a streaming replica of database_url")
        return v.strip()

    @model_validator(mode="after")
    def _paths_follow_data_dir(self) -> Settings:
        """Defaults that were not set explicitly (file, environment or arguments) follow ``data_dir``.

        The values are replaced without marking them as set, so ``model_dump(exclude_unset=True)`` (how the
        environment is layered over the config file) still leaves them out and the final data_dir decides."""
        d = self.data_dir
        if "database_url" not in self.model_fields_set:
            object.__setattr__(self, "database_url", f"sqlite:///{d / 'registry.db'}")
        _default_to(self, "store", "sqlite_path", d / "telemetry.db")
        _default_to(self, "mqtt", "broker_dir", d / "mosquitto")
        _default_to(self, "mqtt", "tls_dir", d / "certs")
        return self

    def refuse_placeholders(self) -> None:
        """Outside dev, the built-in development secrets are refused."""
        if self.env == "prod" and self.mqtt.password.get_secret_value().startswith("dev-only"):
            raise UserError("mqtt.password: a real secret is required when env=prod")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, file_secret_settings)


def _default_to(settings: Settings, section: str, name: str, value: Path) -> None:
    """Give ``settings.<section>.<name>`` this default unless it was set; the section is copied (never shared)."""
    sub = getattr(settings, section)
    if name in sub.model_fields_set:
        return
    sub = sub.model_copy()
    object.__setattr__(sub, name, value)
    object.__setattr__(settings, section, sub)


def _format_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid settings in {origin}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional YAML file, the environment and explicit overrides.

    Raises UserError naming the file and the field path of every problem.
    """
    path = config_file or (Path(os.environ["LIANFANG_CONFIG"]) if os.environ.get("LIANFANG_CONFIG") else None)
    data: dict[str, Any] = {}
    origin = "environment"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path}: the top level must be a mapping")
        data = loaded
    # Environment overrides file: pydantic-settings gives init values priority, so merge by hand.
    try:
        from_env = _EnvOnly()
    except ValidationError as exc:
        raise UserError(_format_error(exc, "environment")) from exc
    merged = _deep_merge(data, from_env.model_dump(exclude_unset=True))
    merged = _deep_merge(merged, overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise UserError(_format_error(exc, origin)) from exc
    settings.refuse_placeholders()
    return settings


class _EnvOnly(Settings):
    """Reads only the environment; used to layer env over the config file."""


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
