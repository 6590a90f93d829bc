"""The running service: broker (embedded, optional), registry, telemetry store, ingest, alert engine, gateway.

One process or one role per process (``lianfang ingest``, ``lianfang alerts``); the same code either way.
``with_ingest`` and ``with_engine`` say which roles run here:

- both (the default, and ``alerts.engine: inline``): the alert engine is a listener of ingest in this process;
- ingest only, with ``alerts.engine: separate``: ingest forwards its batches to the engine partitions over the
  broker (ingest/forward.py) and acks the devices' messages once the broker holds them for the engine;
- engine only: the engine consumes its partitions (lianfang/engine_role.py); ``lianfang serve`` runs this beside
  the gateway and starts ingest as its child process (lianfang/ingest_child.py).

Start order is broker -> store -> alerts -> ingest -> gateway; stop is the reverse, so ingest acks what it
holds before the engine and the broker go away.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pydantic import SecretStr

from alerts.data_quality import DataQualityAlerts
from alerts.energy_jobs import EnergyChecks
from alerts.platform import PlatformAlerts, root_region_of
from alerts.wiring import AlertsRuntime
from core import clock, gcpolicy
from core.errors import BrokerUnavailable, StoreUnavailable, UserError
from core.fsperm import private_dir
from core.settings import Settings
from core.store import BatchListener, TelemetryStore
from core.wal import WalCheckpointer, checkpoint_in_background
from devices.audit import AuditLog
from devices.audit import anchor as audit_anchor
from devices.broker import BrokerConfig, MosquittoProcess
from devices.certs import CertPaths
from devices.registry import Registry
from ingest.broker_drops import BrokerDropMonitor
from ingest.forward import EngineForwarder, LossNotice, Partitioner, owned_partitions, region_paths
from ingest.resend import Loss, ResendManager, ResendPolicy
from ingest.service import WARM_ROWS, IngestService
from joint.notify import IncidentNotifier
from joint.notify import start_notifications as start_incident_notifications
from joint.risk_store import snapshotter_from_settings
from joint.service import JointService
from joint.service import build as build_joint
from lianfang.context import open_registry, open_store
from lianfang.engine_commands import EngineCommands
from lianfang.engine_linkage import start_engine_linkage
from lianfang.engine_live import LivePublisher
from lianfang.engine_role import EngineConsumer, EngineStallAlerts, RelayedIngestMetrics
from lianfang.ingest_child import IngestChild
from lianfang.partitioned_joint import PartitionedCorrelator, warn_wide_patterns

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSecrets:
    """Passwords of the embedded broker's built-in accounts, generated once, kept 0600 in the data directory."""

    admin: str
    platform: str
    sim: str

    @classmethod
    def load_or_create(cls, path: Path) -> BrokerSecrets:
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(doc["admin"], doc["platform"], doc["sim"])
        private_dir(path.parent)
        made = cls(*(secrets.token_urlsafe(32) for _ in range(3)))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"admin": made.admin, "platform": made.platform, "sim": made.sim}, fh)
        return made


def broker_secrets_path(settings: Settings) -> Path:
    return settings.mqtt.broker_dir.parent / "broker-secrets.json"


def tls_files(settings: Settings) -> dict[str, Any]:
    """BrokerConfig's TLS fields from settings: none unless ``mqtt.tls_port`` is set."""
    if settings.mqtt.tls_port is None:
        return {}
    paths = CertPaths(settings.mqtt.tls_dir or settings.data_dir / "certs")
    missing = [p for p in (paths.ca_cert, paths.server_cert, paths.server_key) if not p.exists()]
    if missing:
        raise UserError(f"mqtt.tls_port is set but {missing[0]} does not exist: run 'lianfang certs init' first")
    return {
        "tls_port": settings.mqtt.tls_port,
        "tls_certfile": paths.server_cert,
        "tls_keyfile": paths.server_key,
        "tls_cafile": paths.ca_cert,
    }


@dataclass
class Runtime:
    settings: Settings
    with_ingest: bool = True
    # The alert engine in this process; None: where ingest is (module doc).
    with_engine: bool | None = None
    # Start ingest as a child process (lianfang/ingest_child.py); with with_ingest=False and the engine here.
    spawn_ingest: bool = False
    listeners: list[BatchListener] = field(default_factory=list)
    registry: Registry | None = None
    store: TelemetryStore | None = None
    broker: MosquittoProcess | None = None
    ingest: IngestService | None = None
    alerts: AlertsRuntime | None = None
    joint: JointService | None = None  # incidents correlated from alerts (joint/service.py)
    incident_notifier: IncidentNotifier | None = None  # incident and task notifications (joint/notify.py)
    platform_alerts: PlatformAlerts | None = None  # "ingest stalled", "store unavailable" (alerts/platform.py)
    scheduler: BackgroundScheduler | None = None
    checkpointer: WalCheckpointer | None = None
    retention_interval_s: float = 3600.0
    resend: ResendManager | None = None  # seq gaps asked back from devices (ingest/resend.py)
    broker_drops: BrokerDropMonitor | None = None  # the broker's dropped-message counter (ingest/broker_drops.py)
    forwarder: EngineForwarder | None = None  # ingest -> engine partitions over the broker (ingest/forward.py)
    engine: EngineConsumer | None = None  # the engine role's feed (lianfang/engine_role.py)
    engine_alerts: EngineStallAlerts | None = None  # the platform alert "alert engine stalled"
    ingest_child: IngestChild | None = None  # lianfang serve's ingest process
    relayed_metrics: RelayedIngestMetrics | None = None  # ingest's metrics in this process's /metrics
    linkage_stop: Callable[[], None] | None = None  # the engine role's linkage actions (lianfang/engine_linkage.py)
    live: LivePublisher | None = None  # the engine role's live relay to the gateway (lianfang/engine_live.py)

    @property
    def engine_here(self) -> bool:
        return self.with_ingest if self.with_engine is None else self.with_engine

    @property
    def forwarding(self) -> bool:
        """Ingest runs here and hands its batches to an engine in another process."""
        s = self.settings.alerts
        return self.with_ingest and not self.engine_here and s.enabled and s.engine == "separate"

    def start(self) -> None:
        s = self.settings
        self.registry = open_registry(s)
        self.checkpointer = checkpoint_in_background(self.registry.engine)  # alerts commit here: off their path
        self.store = open_store(s)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scheduler.add_job(self.apply_retention, "interval", seconds=self.retention_interval_s)
        self.scheduler.start()
        if s.mqtt.embedded_broker:
            sec = BrokerSecrets.load_or_create(broker_secrets_path(s))
            cfg = BrokerConfig(
                directory=s.mqtt.broker_dir,
                port=s.mqtt.port,
                host=s.mqtt.host,
                admin_password=sec.admin,
                platform_username=s.mqtt.username,
                platform_password=sec.platform,
                sim_password=sec.sim if s.env == "dev" else None,
                autosave_interval_s=s.mqtt.broker_autosave_interval,
                autosave_on_changes=s.mqtt.broker_autosave_on_changes,
                # device identities in a password file, changed live, when chosen (ADR 0006; dynsec otherwise)
                device_passwd=s.mqtt.device_identities == "password_file",
                device_port=s.mqtt.device_listener_port,
                **tls_files(s),
            )
            self.broker = MosquittoProcess(cfg)
            self.broker.start()
            self.settings = s = s.model_copy(
                update={"mqtt": s.mqtt.model_copy(update={"password": SecretStr(sec.platform)})}
            )
        listeners = list(self.listeners)
        consume = self.engine_here and not self.with_ingest and s.alerts.enabled  # the engine role, fed over MQTT
        if self.engine_here and s.alerts.enabled:
            # Built first: it checks the rule files, so a typo is one clear line before any broker connection.
            self.alerts = AlertsRuntime(s, self.registry)
        if consume:
            # The engine's session first (so nothing forwarded to it is dropped), evaluating nothing until the
            # engine is loaded; then ingest starts in its child process, in parallel with the engine's loading.
            try:
                self.engine = EngineConsumer(s.mqtt, s.alerts, (), hold=True)
            except ValueError as exc:
                self.stop()
                raise UserError(str(exc)) from exc
            try:
                self.engine.start()
            except BrokerUnavailable:
                self.stop()
                raise
            self.relayed_metrics = RelayedIngestMetrics(self.engine.relayed_ingest_metrics).install()
            if self.spawn_ingest:
                self.ingest_child = IngestChild(s)
                self.ingest_child.start()
        if self.alerts is not None:
            # Alerts start before ingest and stop after it: no batch arrives after their final state write.
            if s.joint.enabled:  # joint prevention and control: attached and loaded before alerts flow
                self.joint = build_joint(s, self.registry, self.alerts)
                if self.alerts.owns is not None:  # several engines: incident ids of its residue, its own loaded
                    self.joint.correlator = PartitionedCorrelator(
                        self.joint.patterns, {}, stride=s.alerts.partitions, owned=sorted(self.alerts.owned)
                    )
                    warn_wide_patterns(self.joint.patterns, s.alerts.partition_level, self.registry.regions())
                # The gateway is given the alerts runtime: it finds the joint service there (routes/incidents.py).
                self.alerts.joint = self.joint  # type: ignore[attr-defined]
                self.incident_notifier = start_incident_notifications(self.joint, self.alerts)
                self.joint.start()
            self.alerts.start()
            listeners.insert(0, self.alerts.on_batch)
            if self.alerts.owns is not None and consume and not self.spawn_ingest:
                # The engine role alone: its batches and incident changes to the gateway's live stream
                # (lianfang/engine_live.py), after the alert engine's listener and the commits.
                assert self.engine is not None
                self.live = LivePublisher(
                    s.mqtt, s.alerts.partitions, self.alerts.owned, client_id=f"{self.engine.client_id}-live"
                ).start()
                listeners.append(self.live.on_batch)
                if self.joint is not None:
                    self.joint.subscribe(self.live.on_change)
            if self.joint is not None and self.alerts.owns is not None and consume and not self.spawn_ingest:
                # The engine role alone (no gateway here): the linkage actions of its incidents run here, their
                # cmd_result events come with its batches (lianfang/engine_linkage.py). `serve`'s are the gateway's.
                assert self.engine is not None
                linkage, self.linkage_stop = start_engine_linkage(
                    s, self.registry, self.joint, self.alerts.owned, f"{self.engine.client_id}-actions", self.live
                )
                self.alerts.linkage = linkage
                listeners.append(linkage.on_batch)
            if consume:
                self._start_engine(listeners)
            # Region risk history (joint/risk_store.py, docs/risk.md): where the alert engine runs, once per install
            # (with engine partitions: by the engine of partition 0).
            if 0 in owned_partitions(s.alerts):
                self.scheduler.add_job(
                    snapshotter_from_settings(self.registry.engine, self.registry.regions, s, clock.now).run,
                    "interval",
                    seconds=s.risk.snapshot_interval_s,
                )
                if s.reports.schedules:  # scheduled reports (reports/schedule.py, docs/reports.md), once per install
                    self._start_report_schedules()
                # E6 submeter balance and E7 quota: judged hourly from the store (alerts/energy_jobs.py)
                rt, store = self.alerts, self.store
                assert store is not None
                checks = EnergyChecks(self.registry.engine, store, lambda: rt.rules, rt.apply_platform_changes)
                self.scheduler.add_job(
                    checks.poll_once, "interval", seconds=checks.interval_s, next_run_time=clock.now()
                )
        if self.forwarding:
            self.forwarder = EngineForwarder(
                s.mqtt,
                Partitioner(s.alerts.partitions, s.alerts.partition_level, region_paths(self.registry)),
                status=self.ingest_status,
            )
            try:
                self.forwarder.start()
            except BrokerUnavailable:
                self.stop()
                raise
        if self.with_ingest:
            self._start_recovery(listeners)
        if self.with_ingest:
            self.ingest = IngestService(
                s.mqtt,
                s.ingest,
                self.store,
                self.registry.snapshot,
                listeners=listeners,
                forward=self.forwarder.forward if self.forwarder is not None else None,
            )
            try:
                self.ingest.start()
            except BrokerUnavailable:
                self.stop()
                raise
            if self.forwarder is not None:
                self.forwarder.start_status()
            if self.alerts is not None:
                self.platform_alerts = PlatformAlerts(
                    self.ingest_status, self.alerts.apply_platform_changes, root_region_of(self.registry)
                ).start()
        if s.audit.anchor_minutes > 0:  # the audit chain's head to the log and the metrics (devices/audit.py)
            self.anchor_audit()
            self.scheduler.add_job(self.anchor_audit, "interval", seconds=s.audit.anchor_minutes * 60)
        if s.gc_settle_s > 0:
            gcpolicy.settle("start-up")
            self.scheduler.add_job(gcpolicy.settle, "interval", args=["periodic"], seconds=s.gc_settle_s)

    def _start_report_schedules(self) -> None:
        from reports.schedule import start_report_schedules
        from reports.source import LiveSource

        assert self.alerts is not None and self.registry is not None and self.store is not None
        assert self.scheduler is not None
        registry = self.registry
        source = LiveSource(registry.engine, self.store, self.alerts.rules.calendar)
        try:
            start_report_schedules(
                self.settings.reports,
                source,
                self.alerts.notify_config,
                self.scheduler,
                lambda rid: registry.region(rid) is not None,
            )
        except UserError:
            self.stop()
            raise

    def wait_ingest(self, timeout: float = 60.0) -> None:
        """With ingest as a child process: return once it has reported that it is connected (so ``serve`` is up
        when its API answers, as with ingest in-process). BrokerUnavailable when it does not in time."""
        child = self.ingest_child
        if child is None or self.engine is None:
            return
        deadline = time.monotonic() + timeout
        while not self.engine.ingest_status().get("connected"):
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"the ingest process did not report a broker connection in {timeout:.0f} s")
            if not child.alive() and child.restarts == 0 and child.proc is not None:
                raise BrokerUnavailable(f"the ingest process exited at start (code {child.proc.returncode})")
            time.sleep(0.1)

    def anchor_audit(self) -> None:
        if self.registry is None:
            return
        try:
            audit_anchor(AuditLog(self.registry.session), now=clock.now())
        except StoreUnavailable as exc:
            logger.warning("audit anchor: store unavailable, will retry: %s", exc)

    def apply_retention(self) -> int:
        """Delete telemetry, events and rejections older than ``store.retention_days``."""
        if self.store is None:
            return 0
        horizon = clock.now_ms() - self.settings.store.retention_days * 86_400_000
        try:
            deleted = self.store.prune(horizon)
        except StoreUnavailable as exc:
            logger.warning("retention: store unavailable, will retry: %s", exc)
            return 0
        if deleted:
            logger.info("retention: deleted %d rows older than %d days", deleted, self.settings.store.retention_days)
        return deleted

    def stop(self) -> None:
        if self.ingest_child is not None:  # ingest first: it writes, forwards and acks what it holds
            self.ingest_child.stop()
            self.ingest_child = None
        if self.platform_alerts is not None:
            self.platform_alerts.stop()
            self.platform_alerts = None
        if self.engine_alerts is not None:
            self.engine_alerts.stop()
            self.engine_alerts = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        self._stop_recovery()
        if self.forwarder is not None:  # after ingest: its last batches are PUBACKed before it acks them
            self.forwarder.stop()
            self.forwarder = None
        if self.engine is not None:  # before the alert engine: what it was given is evaluated and acked
            self.engine.stop()
            self.engine = None
        if self.relayed_metrics is not None:
            self.relayed_metrics.uninstall()
            self.relayed_metrics = None
        if self.linkage_stop is not None:
            self.linkage_stop()
            self.linkage_stop = None
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.alerts is not None:
            self.alerts.stop()
            self.alerts = None
        if self.joint is not None:
            self.joint.stop()
            self.joint = None
        if self.incident_notifier is not None:
            self.incident_notifier.stop()
            self.incident_notifier = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self.registry is not None:
            self.registry.engine.dispose()

    def broker_status(self) -> dict[str, Any]:
        if self.ingest is None and self.engine is not None:
            return {
                "ok": self.engine.connected.is_set(),
                "host": self.settings.mqtt.host,
                "port": self.settings.mqtt.port,
            }
        if self.ingest is None:
            return {"ok": self.broker is not None and self.broker.proc is not None}
        return {
            "ok": self.ingest.consumer.connected.is_set(),
            "host": self.settings.mqtt.host,
            "port": self.settings.mqtt.port,
        }

    def alerts_status(self) -> dict[str, Any]:
        if self.alerts is None:
            return {"ok": False, "detail": "alerts not running in this process"}
        return self.alerts.status()

    def ingest_status(self) -> dict[str, Any]:
        if self.ingest is None and self.engine is not None:
            st = self.engine.ingest_status()  # ingest runs elsewhere and reports over the broker
            if self.ingest_child is not None:
                st["child"] = self.ingest_child.status()
            return st
        if self.ingest is None:
            return {"ok": False, "detail": "ingest not running in this process"}
        st = self.ingest.status()
        if self.resend is not None:
            st["resend"] = self.resend.status()
        if self.broker_drops is not None:
            st["broker_drops"] = self.broker_drops.status()
        # Not ready while stalled (ingest/stall.py): the reason says why (old backlog, store unavailable, ...).
        return {"ok": bool(st["connected"]) and bool(st["writer_alive"]) and not st.get("stalled"), **st}

    # --- the engine role -------------------------------------------------------------------------------------

    def _start_engine(self, listeners: list[BatchListener]) -> None:
        """The engine's feed from ingest (other processes), their status, the stall alert and broker drops."""
        s = self.settings
        assert self.alerts is not None and self.registry is not None
        dq = DataQualityAlerts(
            self.alerts.service,
            self.registry.snapshot,
            apply_platform=self.alerts.apply_platform_changes,
            root_region=root_region_of(self.registry),
        )

        def lost(n: LossNotice) -> None:
            dq.seq_lost(
                n.device_id,
                n.from_seq,
                n.to_seq,
                n.reason,
                count=n.count,
                region_id=n.region_id,
                device_type=n.device_type,
            )

        assert self.engine is not None
        self.engine.release(listeners, lost)
        self.alerts.engine_status = self.engine.status
        root = root_region_of(self.registry)
        if 0 in self.engine.partitions:  # "ingest stalled" once per installation: by the engine of partition 0
            self.platform_alerts = PlatformAlerts(self.ingest_status, self.alerts.apply_platform_changes, root).start()
        self.engine_alerts = EngineStallAlerts(self.engine.status, self.alerts.apply_platform_changes, root).start()
        if self.alerts.owns is not None:  # several engines: people's actions on this one's alerts come over the broker
            self.alerts.commands = EngineCommands(
                s.mqtt, sorted(self.alerts.owned), self.alerts.handle_command, client_id=f"{self.engine.client_id}-cmd"
            ).start()
        self.broker_drops = BrokerDropMonitor(
            s.mqtt, on_drops=dq.broker_dropped, client_id=f"{self.engine.client_id}-sys"
        )
        self.broker_drops.start()

    # --- resend and broker drops (issue 8) -------------------------------------------------------------------

    def _start_recovery(self, listeners: list[BatchListener]) -> None:
        """The resend manager (a listener after the alert engine) and the broker drop monitor; before ingest."""
        s = self.settings
        assert self.store is not None and self.registry is not None
        dq = None
        if self.alerts is not None:
            dq = DataQualityAlerts(
                self.alerts.service,
                self.registry.snapshot,
                apply_platform=self.alerts.apply_platform_changes,
                root_region=root_region_of(self.registry),
            )
        if s.resend.enabled and s.mqtt.shared_group is None:
            forwarder = self.forwarder

            def lost(loss: Loss, region_id: str, device_type: str) -> None:
                if forwarder is not None:  # the engine runs elsewhere: it raises the data-quality alert
                    forwarder.forward_loss(
                        LossNotice(
                            loss.device_id,
                            loss.from_seq,
                            loss.to_seq,
                            loss.reason,
                            loss.count,
                            region_id,
                            device_type,
                        )
                    )
                if dq is not None:
                    dq.seq_lost(
                        loss.device_id,
                        loss.from_seq,
                        loss.to_seq,
                        loss.reason,
                        count=loss.count,
                        region_id=region_id,
                        device_type=device_type,
                    )

            self.resend = ResendManager(ResendPolicy.from_settings(s.resend), mqtt_settings=s.mqtt, on_loss=lost)
            self.resend.warm(self.store.recent_seqs(WARM_ROWS))
            self.resend.start()
            listeners.append(self.resend.on_batch)
        elif s.resend.enabled:
            logger.warning("resend is off: with a shared subscription each ingest process sees only part of the seqs")
        self.broker_drops = BrokerDropMonitor(s.mqtt, on_drops=dq.broker_dropped if dq is not None else None)
        self.broker_drops.start()

    def _stop_recovery(self) -> None:
        if self.resend is not None:
            self.resend.stop()
            self.resend = None
        if self.broker_drops is not None:
            self.broker_drops.stop()
            self.broker_drops = None
