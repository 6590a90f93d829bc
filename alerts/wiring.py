"""The alert side of a running Lianfang: the composition root of ``alerts/``.

``AlertsRuntime(settings, registry)`` builds and owns

- the ``AlertService`` (the packs in ``alerts/packs``, ``settings.alerts.rules_paths``, then the rules and
  overrides edited through the API: ``rule_admin``, an ``alerts.rule_store.RuleAdmin`` that applies every API
  edit to the running service),
- the notification ``Dispatcher`` (``settings.alerts.notify_config``; no file: no channels, alerts are still
  evaluated and stored),
- the ``Escalator``, driven by an apscheduler job every ``settings.alerts.escalation_tick_s``,
- the subscription that turns lifecycle events into notifications (``notification_kind``).

Rule files and the notification config are read and validated in the constructor, so a bad file fails at start-up
with a ``UserError`` naming the file and field. Start order: ``start()`` before ingest starts (so ``on_batch`` is
ready), ``stop()`` after ingest has stopped (so no batch arrives after the last state is written)::

    alerts = AlertsRuntime(settings, registry)
    alerts.start()
    ingest = IngestService(..., listeners=[alerts.on_batch, ...])
    ...
    ingest.stop(); alerts.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from alerts.escalation import Escalator
from alerts.lifecycle import AlertBook, LifecycleEvent
from alerts.notify import DeliveryLog, Dispatcher, Notification, NotificationKind, NotifyConfig, load_notify_config
from alerts.notify.channels import Channel
from alerts.rule_check import Known
from alerts.rule_store import RuleAdmin, RuleStore
from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, notification_kind, regions_from_registry
from alerts.types import Alert, AlertChange
from core import clock
from core.errors import StoreUnavailable, UserError
from core.protocol import Event, Record
from core.settings import Settings
from core.store import WriteBatch
from devices.dispatch import DispatchStore
from devices.provisioning import expiring
from devices.registry import Registry
from ingest.forward import owned_partitions, partition_owner

logger = logging.getLogger(__name__)


class RegionDirectory:
    """Region ancestors and display names from the registry, cached.

    Re-read every ``refresh_s``, and on a region it does not know (at most every ``miss_refresh_s``), so the
    notification router and the escalator do not query the database per alert.
    """

    def __init__(self, registry: Registry, refresh_s: float = 60.0, miss_refresh_s: float = 5.0) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self._paths: dict[str, tuple[str, ...]] = {}
        self._names: dict[str, str] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _fresh(self, region_id: str) -> bool:
        age = time.monotonic() - self._loaded_at
        return age < self.refresh_s and (region_id in self._paths or age < self.miss_refresh_s)

    def _maybe_reload(self, region_id: str) -> None:
        if self._fresh(region_id):
            return
        with self._lock:
            if self._fresh(region_id):
                return  # another thread reloaded meanwhile
            try:
                regions = self.registry.regions()
            except (SQLAlchemyError, StoreUnavailable) as exc:
                logger.warning("region directory: registry unavailable, keeping %d regions: %s", len(self._paths), exc)
                self._loaded_at = time.monotonic() - self.refresh_s + self.miss_refresh_s
                return
            self._paths = {r.id: tuple(p for p in r.path.split("/") if p) for r in regions}
            self._names = {r.id: r.name for r in regions}
            self._loaded_at = time.monotonic()

    def ancestors(self, region_id: str) -> list[str]:
        """Root first, the region itself last; empty for an unknown region."""
        self._maybe_reload(region_id)
        return list(self._paths.get(region_id, ()))

    def name(self, region_id: str) -> str:
        self._maybe_reload(region_id)
        return self._names.get(region_id, region_id)


class PartitionedAlertBook(AlertBook):
    """An alert book whose new alert ids are ``offset`` modulo ``stride``: engines of different partitions
    (``alerts.engine_partitions``) share one alerts table without giving two alerts the same id."""

    def __init__(self, config: Any, *, stride: int, offset: int) -> None:
        self._stride, self._offset = stride, offset
        self._nid = offset or stride
        super().__init__(config)

    @property
    def next_id(self) -> int:
        return self._nid

    @next_id.setter
    def next_id(self, value: int) -> None:
        self._nid = value + (self._offset - value) % self._stride  # the first id >= value in this residue


class AlertsRuntime:
    """Builds and owns the alert service, notifications and escalation; see the module doc.

    ``channels`` replaces notification adapters by channel name (a test seam); the timing knobs that are not in
    settings are constructor parameters.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        clock_fn: Callable[[], datetime] = clock.now,
        channels: Mapping[str, Channel] | None = None,
        notify_config: NotifyConfig | None = None,
        snapshot_interval_s: float = 10.0,
        refresh_interval_s: float = 60.0,
        notify_stop_timeout_s: float = 5.0,
        notify_idle_wait_s: float = 1.0,
        sync_poll_s: float = 2.0,
    ) -> None:
        cfg = settings.alerts
        self.settings = cfg
        self.registry = registry
        self._clock = clock_fn
        # An engine of some partitions reloads the rules when their stored version moves (``poll_rules``): the
        # version read before they are built, so an edit made meanwhile is taken at the first poll.
        partial = len(owned_partitions(cfg)) < cfg.partitions
        self._rules_version = RuleStore(registry.engine).version() if partial else 0
        # Files, then the API layer from the database (alerts/rule_store.py); API edits go through rule_admin.
        # A rule that can never match (an unknown field, event, region or device: alerts/rule_check.py) is a
        # UserError here: the service refuses to start with one line naming it.
        self.rule_admin = RuleAdmin(
            [PACKS_DIR, *cfg.rules_paths], RuleStore(registry.engine), known=lambda: Known.from_registry(registry)
        )
        self.rules: RuleSet = self.rule_admin.rules
        if notify_config is None:
            notify_config = load_notify_config(cfg.notify_config) if cfg.notify_config is not None else NotifyConfig()
        self.notify_config = notify_config
        self.regions = RegionDirectory(registry, refresh_s=refresh_interval_s)
        # An engine of some partitions only (lianfang/engine_role.py) evaluates, watches for absence, checks the
        # credentials of and escalates the devices and alerts of its own regions.
        self.owns = partition_owner(cfg, registry)
        self.devices = registry.snapshot if self.owns is None else self._own_devices
        self.service = AlertService(
            registry.engine,
            self.rules,
            self.devices,
            regions_from_registry(registry),
            clock_fn=clock_fn,
            tick_interval_s=cfg.tick_interval_s,
            snapshot_interval_s=snapshot_interval_s,
            refresh_interval_s=refresh_interval_s,
            dispatches=DispatchStore(registry.engine).book,
        )
        self.dispatcher = Dispatcher(
            notify_config,
            DeliveryLog(registry.engine),
            self.regions.ancestors,
            channels=channels,
            region_name=self.regions.name,
            clock=clock_fn,
            stop_timeout_s=notify_stop_timeout_s,
            idle_wait_s=notify_idle_wait_s,
        )
        # Alerts muted under an open incident (joint/service.py ``held``) send nothing and do not escalate.
        self.mutes: list[Callable[[int], bool]] = []
        self.escalator = Escalator(
            notify_config.escalation.to_policies(),
            self.regions.ancestors,
            self._escalatable,
            lambda esc, now: self.service.set_escalation_level(esc.alert_id, esc.level, now, esc.due_at),
            self.dispatcher.notify,
        )
        # With engine partitions: which engine owns an alert (people's actions on another's go there over the
        # broker, lianfang/engine_commands.py), and the silences and rule edits every engine takes from SQL.
        self.owned: frozenset[int] = frozenset(range(cfg.partitions))
        self.commands: Any = None  # lianfang.engine_commands.EngineCommands, started by lianfang/runtime.py
        # joint.actions.LinkageActions of this engine's incidents (the gateway's in `serve`, the engine role's own
        # in `lianfang alerts`: lianfang/engine_linkage.py); linkage commands from the gateway go to it.
        self.linkage: Any = None
        self.sync_poll_s = sync_poll_s
        if self.owns is not None:
            owned = owned_partitions(cfg)
            self.owned = frozenset(owned)
            self.service.book = PartitionedAlertBook(self.service.book.config, stride=cfg.partitions, offset=owned[0])
            self.service.keeps = lambda a: self.owner_of(a) is None
        self.rule_admin.apply = self._apply_rules
        self.service.subscribe(self._to_dispatcher)
        self._scheduler: BackgroundScheduler | None = None
        self._state = "new"  # new -> running -> stopped
        self._lock = threading.Lock()
        self.notified = 0
        self.escalations = 0
        # The feed of the engine role (lianfang/engine_role.py ``EngineConsumer.status``), when it runs there:
        # shown in status() and part of its "ok".
        self.engine_status: Callable[[], dict[str, Any]] | None = None

    def _own_devices(self) -> Mapping[str, Any]:
        owns = self.owns
        assert owns is not None
        return {k: d for k, d in self.registry.snapshot().items() if owns(d.region_id)}

    # --- rules ------------------------------------------------------------------------------------------

    def _apply_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.service.set_rules(rules)  # the state of rules that still exist is kept

    def reload_rules(self) -> RuleSet:
        """Rebuild the rule set (files as read at start, the API layer as stored now) and swap it into the running
        service. API writes through ``rule_admin`` do this themselves."""
        return self.rule_admin.reload()

    def poll_rules(self) -> bool:
        """Reload the rule set when its stored version moved (an API edit made in another engine's process); True
        if it did. A job of engines of some partitions only: with one engine every edit is made here."""
        version = self.rule_admin.store.version()
        if version == self._rules_version:
            return False
        self.rule_admin.reload()
        self._rules_version = version
        logger.info("alerts: rules reloaded (stored version %d)", version)
        return True

    # --- several engines: who owns an alert, people's actions from the gateway, silences ------------------

    def owner_of(self, alert: Alert) -> int | None:
        """None when this process's engine holds ``alert`` live (always with one engine); else the partition
        whose engine does: the residue of its id (``PartitionedAlertBook``), which names the engine that raised
        it. That is the engine of the device's partition, and for the alerts an engine raises outside its
        devices (platform alerts, E6/E7 of the partition-0 engine) the engine that judges them again."""
        if self.owns is None:
            return None
        k = alert.id % self.settings.partitions
        return None if k in self.owned else k

    def incident_owner(self, incident_id: int) -> int | None:
        """None when this process's engine holds the incident live (always with one engine); else the partition
        whose engine does: the residue of its id (lianfang/partitioned_joint.py)."""
        if self.owns is None:
            return None
        k = incident_id % self.settings.partitions
        return None if k in self.owned else k

    def handle_command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A person's action sent by the gateway of another process (lianfang/engine_commands.py): applied here,
        where the alert or incident lives, as the gateway would apply it in its own process. The gateway audits
        it."""
        if op.startswith("incident."):
            return self._incident_command(op, args)
        svc = self.service
        try:
            alert_id, who = int(args["alert_id"]), str(args["who"])
            if op == "alert.ack":
                svc.acknowledge(alert_id, who, str(args.get("reason") or ""))
            elif op == "alert.resolve":
                svc.resolve(alert_id, who, str(args["reason"]))
            elif op == "alert.comment":
                svc.comment(alert_id, who, str(args["text"]))
            elif op == "alert.assign":
                assignee = args.get("assignee")
                svc.assign(alert_id, who, str(assignee) if assignee else None)
            else:
                return {"status": 400, "detail": f"unknown command {op!r}"}
        except (KeyError, TypeError, ValueError) as exc:
            return {"status": 400, "detail": f"a malformed command {op!r}: {exc}"}
        except UserError as exc:
            return {"status": 409, "detail": str(exc)}
        return {"status": 200}

    def _incident_command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op.startswith("incident.action_"):
            return self._linkage_command(op, args)
        joint = getattr(self, "joint", None)  # joint.service.JointService, set by lianfang/runtime.py
        if joint is None:
            return {"status": 503, "detail": "joint control does not run in the owning engine"}
        try:
            who = str(args["who"])
            iid = int(args.get("incident_id") or 0)
            note = str(args["note"]) if args.get("note") else None
            calls: dict[str, Callable[[], object]] = {
                "incident.investigate": lambda: joint.investigate(iid, who),
                "incident.comment": lambda: joint.comment(iid, who, str(args["text"])),
                "incident.resolve": lambda: joint.resolve(iid, who, str(args["reason"])),
                "incident.close": lambda: (
                    note and joint.comment(iid, who, note),
                    joint.close(iid, who, str(args["cause_code"])),
                ),
                "incident.assign": lambda: joint.assign(
                    iid, who, str(args["assignee"]) if args.get("assignee") else None, str(args["reason"])
                ),
                "incident.task_ack": lambda: joint.acknowledge_task(int(args["task_id"]), who, note),
                "incident.task_close": lambda: joint.close_task(int(args["task_id"]), who, note),
            }
        except (KeyError, TypeError, ValueError) as exc:
            return {"status": 400, "detail": f"a malformed command {op!r}: {exc}"}
        call = calls.get(op)
        if call is None:
            return {"status": 400, "detail": f"unknown command {op!r}"}
        try:
            call()
        except (UserError, KeyError, ValueError) as exc:  # as the gateway's local path: a wrong state is a 409
            return {"status": 409, "detail": str(exc)}
        return {"status": 200}

    def _linkage_command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Linkage actions (joint/actions.py) on an incident this engine holds: proposed, confirmed (the command
        published here, once: a redelivered request is answered from the channel's cache) or declined by the
        linkage actions of this process, whose ``cmd_result`` events come with this engine's batches. The gateway
        checked who may do it and audits it."""
        from joint.actions import Target

        linkage = self.linkage
        if linkage is None:
            return {"status": 503, "detail": "linkage actions do not run in the owning engine"}
        try:
            iid, who = int(args["incident_id"]), str(args["who"])
            if op == "incident.action_propose":
                targets = [Target(str(d), str(r), str(t)) for d, r, t in args["targets"]]
                made = linkage.propose(iid, str(args["name"]), targets, by=who, reason=str(args.get("reason") or ""))
                return {"status": 200, "items": [a.doc() for a in made]}
            action_id = str(args["action_id"])
            a = linkage.get(action_id)
            if a is None or a.incident_id != iid:
                return {"status": 404, "detail": f"action {action_id} not found"}
            if op == "incident.action_confirm":
                done = linkage.confirm(action_id, by=who)
            elif op == "incident.action_decline":
                done = linkage.decline(action_id, by=who, reason=str(args.get("reason") or ""))
            else:
                return {"status": 400, "detail": f"unknown command {op!r}"}
        except (KeyError, TypeError, ValueError) as exc:
            return {"status": 400, "detail": f"a malformed command {op!r}: {exc}"}
        except UserError as exc:  # ActionConflict, or a proposal the book refuses
            return {"status": 409, "detail": str(exc)}
        return {"status": 200, "action": done.doc()}

    def sync_silences(self) -> int:
        """Take the silences created or ended in another engine's process (the gateway's) from SQL: a new one is
        applied at the next tick, one ended early ends here at the time it ended there. Returns how many changed.
        A job of engines of some partitions only."""
        svc = self.service
        stored = {s.id: s for s in svc.repo.silences(active_only=True)}
        with svc._lock:
            live = {i for i, s in svc.book.silences.items() if not s.ended}
        gone = {i: svc.repo.silence(i) for i in live - stored.keys()}
        changed = 0

        def run() -> list[LifecycleEvent]:
            nonlocal changed
            book = svc.book
            for sid, silence in stored.items():
                if sid not in book.silences:
                    book.silences[sid] = silence  # not dirty: it is stored; the tick applies it
                    book.next_silence_id = max(book.next_silence_id, sid + 1)
                    changed += 1
            for sid, ended in gone.items():
                mine = book.silences.get(sid)
                if mine is None or mine.ended:
                    continue
                mine.ends_at = min(mine.ends_at, ended.ends_at) if ended is not None else self._clock()
                changed += 1
            return book.tick(now=self._clock()) if changed else []

        svc._act(run)
        if changed:
            logger.info("alerts: %d silences taken from another process", changed)
        return changed

    # --- the hand-offs ----------------------------------------------------------------------------------

    def on_batch(self, batch: WriteBatch) -> None:
        """The ``core.store.BatchListener`` for ingest: evaluate a durable batch; when it returns, the batch's
        alerts are stored. Never raises."""
        self.service.on_batch(batch)

    def _muted(self, alert_id: int) -> bool:
        return any(m(alert_id) for m in self.mutes)

    def _escalatable(self) -> list[Alert]:
        # With engine partitions the book holds only this engine's alerts (``keeps``): each is escalated here,
        # also those it raised outside its devices' regions (E6/E7 by the engine of partition 0).
        alerts = self.service.open_alerts()
        return [a for a in alerts if not self._muted(a.id)] if self.mutes else alerts

    def _to_dispatcher(self, ev: LifecycleEvent) -> None:
        kind = notification_kind(ev)
        if kind is not None and self.mutes and self._muted(ev.alert.id):
            return  # muted under an open incident: the incident is notified instead
        if kind is not None:
            self.dispatcher.notify(Notification(NotificationKind(kind), ev.alert, ev.at))
            self.notified += 1

    def escalate(self) -> None:
        """One escalation pass (the periodic job; also callable directly)."""
        try:
            self.escalations += len(self.escalator.tick(self._clock()))
        except Exception:
            logger.exception("escalation pass failed")

    def check_credentials(self) -> int:
        """Feed a ``credential_expiring`` event per device whose broker credential expires within the warning
        period to the engine (rule CRED1 in alerts/packs/platform.yaml). Returns how many were found."""
        try:
            now = self._clock()
            soon = expiring(self.registry, now, timedelta(days=self.settings.credential_warning_days))
            if not soon:
                return 0
            devices = self.devices()
            now_ms = int(now.timestamp() * 1000)
            records: list[Record] = [
                Event(
                    d.device_id,
                    dev.region_id,
                    dev.device_type,
                    now_ms,
                    None,
                    "credential_expiring",
                    {"expires_at": d.expires_at.isoformat()},
                    False,
                )
                for d in soon
                if (dev := devices.get(d.device_id)) is not None and dev.enabled
            ]
            self.service.process(records, now)
            return len(records)
        except Exception:
            logger.exception("credential expiry check failed")
            return 0

    def apply_platform_changes(self, changes: list[AlertChange]) -> list[LifecycleEvent]:
        """Open or resolve built-in platform alerts (``alerts/platform.py``: ingest stalled, store unavailable)
        through the lifecycle: stored, notified and escalated like any alert."""
        service = self.service
        now = self._clock()  # learned now: the escalation clock counts from here
        return service._act(lambda: [ev for ch in changes for ev in service.book.apply(ch, now=now)])

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load alert state, start the service's timers, the dispatcher (resuming unfinished deliveries) and the
        escalation job. Idempotent."""
        with self._lock:
            if self._state != "new":
                return
            self.dispatcher.start()  # before the service: notifications from restored timers have a taker
            try:
                self.service.start()
            except Exception:
                self.dispatcher.stop()
                self._state = "stopped"
                raise
            sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
            sched.add_job(self.escalate, "interval", seconds=self.settings.escalation_tick_s, id="alerts-escalation")
            sched.add_job(
                self.check_credentials,
                "interval",
                seconds=self.settings.credential_check_s,
                id="alerts-credentials",
                next_run_time=self._clock(),
            )
            if self.owns is not None:  # other engines' processes: their silences and rule edits, from SQL
                poll = self.sync_poll_s
                sched.add_job(self._job(self.sync_silences), "interval", seconds=poll, id="alerts-silences")
                sched.add_job(self._job(self.poll_rules), "interval", seconds=poll, id="alerts-rules")
            sched.start()
            self._scheduler = sched
            self._state = "running"
        logger.info(
            "alerts running: %d rules, %d notification channels, %d routes",
            len(self.rules.rules),
            len(self.notify_config.channels),
            len(self.notify_config.routes),
        )

    @staticmethod
    def _job(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except StoreUnavailable as exc:
                logger.warning("alerts job %s: store unavailable, will retry: %s", fn.__name__, exc)
            except Exception:
                logger.exception("alerts job %s failed", fn.__name__)

        return run

    def stop(self) -> None:
        """Graceful and idempotent: stop escalation and timers, write all alert state, then drain notifications
        (what is left resumes at the next start)."""
        if self.commands is not None:  # no more actions from other processes
            self.commands.stop()
            self.commands = None
        with self._lock:
            if self._state == "stopped":
                return
            was_running = self._state == "running"
            self._state = "stopped"
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=True)
                self._scheduler = None
        if was_running:
            self.service.stop()
        self.dispatcher.stop()
        logger.info("alerts stopped: %d notifications handed over, %d escalations", self.notified, self.escalations)

    def __enter__(self) -> AlertsRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- health ------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For the readiness check: ``ok`` while running with its scheduler and notification threads alive."""
        running = self._state == "running"
        sched = self._scheduler
        workers = self.dispatcher.workers
        dead = sorted(name for name, w in workers.items() if running and not w.is_alive())
        ok = running and sched is not None and sched.running and not dead
        out: dict[str, Any] = {
            "ok": ok,
            "state": self._state,
            "rules": len(self.rules.rules),
            "open_alerts": len(self.service.book.open_by_key),
            "channels": len(workers),
            "notifications": self.notified,
            "escalations": self.escalations,
        }
        if dead:
            out["dead_channels"] = dead
        if self.rule_admin.problems:
            out["rule_problems"] = list(self.rule_admin.problems)
        if self.commands is not None:  # people's actions from the gateway's process (several engines)
            cmd = self.commands.status()
            out["commands"] = cmd
            if not cmd.get("ok"):
                out["ok"] = False
                out["reason"] = "the command channel is not connected to the broker"
        if self.engine_status is not None:
            feed = self.engine_status()
            out["engine"] = feed
            if not feed.get("ok"):
                out["ok"] = False
                out["reason"] = f"engine feed: {feed.get('reason') or 'not ok'}"
        return out
