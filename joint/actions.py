"""Linkage actions (联动处置), guarded: an incident proposes device commands, an authorised person confirms them.

An incident can propose commands for devices of its region, e.g. lock the gates of a building where a door was
forced. Nothing goes out until an authorised person confirms; then the command is published on the device's
``lf/v1/{device_id}/cmd`` topic (PROTOCOL.md: ``{"cmd_id", "name", "args", "expires_at"}``) with an expiry, and the
device's ``cmd_result`` event (seen by ingest) closes it. Every step is recorded on the incident's timeline
(``TimelineKind.ACTION`` with the action in ``data["action"]``) and written to the audit log.

    proposed --confirm--> sent --cmd_result ok--> succeeded
        |                   |  \\--cmd_result not ok--> failed
        |                   \\--no answer by expires_at--> expired
        |--decline--> declined
        \\--not decided within the proposal's life--> expired

Who may do what (docs/joint-api.md "Linkage actions"):

- propose: ``operator`` or ``admin`` whose region scope covers the incident (the correlator proposes as ``system``);
- confirm or decline: ``admin`` whose scope covers **every** target device's region (the region administrator);
  a person never confirms their own proposal (four eyes). An operator cannot confirm: a locked gate keeps people
  in or out of a building, which is a region administrator's decision.

Two parts (CONVENTIONS.md rule 1):

- :class:`ActionBook`: pure state. No I/O, no clock: every call takes ``now``; ids come from an injected ``new_id``.
  It can be rebuilt from the incident timelines (``replay``), which are the durable record: no table of its own.
- :class:`LinkageActions`: the adapter. Publishes confirmed commands with the platform's MQTT identity (reusing
  ``ingest.resend.CommandLink``, the same connection the resend manager uses when it runs), is a
  ``core.store.BatchListener`` that sees ``cmd_result`` events, ticks expiries, and hands every step to
  ``record`` (the timeline, the live stream) and ``audit``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import paho.mqtt.client as mqtt

from core.errors import UserError
from core.protocol import topic_for
from core.settings import MqttSettings
from core.store import WriteBatch
from devices.registry import Registry
from ingest.resend import CommandLink

logger = logging.getLogger(__name__)

SYSTEM = "system"
# The commands an incident may propose, and the device types that obey them.
COMMANDS: dict[str, frozenset[str]] = {"lock": frozenset({"gate"}), "unlock": frozenset({"gate"})}
ActionState = Literal["proposed", "declined", "sent", "succeeded", "failed", "expired"]
OPEN_STATES: frozenset[str] = frozenset({"proposed", "sent"})
PROPOSERS = ("operator", "admin")
CONFIRMERS = ("admin",)
MAX_TARGETS = 200  # devices per proposal
LATE_ANSWERS = timedelta(minutes=10)  # cmd_result events are still looked for this long after a command expired
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Incident types whose opening proposes a command at once (proposed by ``system``; a region admin still confirms):
# an intrusion (X2) proposes locking the building's gates.
AUTO_PROPOSE: dict[str, str] = {"intrusion": "lock"}


def auto_proposal(incident_type: str) -> str | None:
    """The command an incident of this type proposes when it opens, or None."""
    return AUTO_PROPOSE.get(incident_type)


class ActionDenied(UserError):
    """The caller may not take this step (role, scope, four eyes): the API answers 403."""


class ActionConflict(UserError):
    """The action is not in a state that allows the step (already decided, expired): the API answers 409."""


@dataclass(frozen=True, slots=True)
class Target:
    device_id: str
    region_id: str
    device_type: str


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    proposal_ttl: timedelta = timedelta(minutes=30)  # a proposal nobody decided on expires
    command_ttl: timedelta = timedelta(minutes=2)  # the command's expires_at: the device ignores it after this

    def __post_init__(self) -> None:
        if self.proposal_ttl <= timedelta(0) or self.command_ttl <= timedelta(0):
            raise ValueError("proposal_ttl and command_ttl must be positive")


@dataclass(frozen=True, slots=True)
class LinkageAction:
    """One command for one device, proposed for one incident."""

    id: str
    incident_id: int
    name: str
    device_id: str
    region_id: str
    state: ActionState
    proposed_by: str
    proposed_at: datetime
    reason: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    decided_by: str | None = None
    decided_at: datetime | None = None
    decline_reason: str | None = None
    cmd_id: str | None = None
    sent_at: datetime | None = None
    expires_at: datetime | None = None  # the proposal's, then (once sent) the command's
    result_ok: bool | None = None
    result_detail: str | None = None
    result_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def doc(self) -> dict[str, Any]:
        """JSON-ready, times as ISO 8601 UTC: what the timeline stores and the API answers."""
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "name": self.name,
            "device_id": self.device_id,
            "region_id": self.region_id,
            "state": self.state,
            "args": dict(self.args),
            "reason": self.reason,
            "proposed_by": self.proposed_by,
            "proposed_at": _iso(self.proposed_at),
            "decided_by": self.decided_by,
            "decided_at": _iso(self.decided_at),
            "decline_reason": self.decline_reason,
            "cmd_id": self.cmd_id,
            "sent_at": _iso(self.sent_at),
            "expires_at": _iso(self.expires_at),
            "result_ok": self.result_ok,
            "result_detail": self.result_detail,
            "result_at": _iso(self.result_at),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> LinkageAction:
        return cls(
            id=str(doc["id"]),
            incident_id=int(doc["incident_id"]),
            name=str(doc["name"]),
            device_id=str(doc["device_id"]),
            region_id=str(doc["region_id"]),
            state=doc["state"],
            args=dict(doc.get("args") or {}),
            reason=str(doc.get("reason") or ""),
            proposed_by=str(doc["proposed_by"]),
            proposed_at=_parse(doc["proposed_at"]) or EPOCH,
            decided_by=doc.get("decided_by"),
            decided_at=_parse(doc.get("decided_at")),
            decline_reason=doc.get("decline_reason"),
            cmd_id=doc.get("cmd_id"),
            sent_at=_parse(doc.get("sent_at")),
            expires_at=_parse(doc.get("expires_at")),
            result_ok=doc.get("result_ok"),
            result_detail=doc.get("result_detail"),
            result_at=_parse(doc.get("result_at")),
        )

    def command_payload(self) -> bytes:
        """The command as PROTOCOL.md defines it; ``expires_at`` in epoch milliseconds."""
        assert self.cmd_id is not None and self.expires_at is not None
        return orjson.dumps(
            {"cmd_id": self.cmd_id, "name": self.name, "args": dict(self.args), "expires_at": _ms(self.expires_at)}
        )

    @property
    def topic(self) -> str:
        return topic_for(self.device_id, "cmd")


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


# --- who may (pure) ---------------------------------------------------------------------------------------------


def check_propose(role: str, sees_region: Callable[[str], bool], targets: Sequence[Target]) -> None:
    if role not in PROPOSERS:
        raise ActionDenied(f"proposing a linkage action needs the role {' or '.join(PROPOSERS)}")
    if any(not sees_region(t.region_id) for t in targets):
        raise ActionDenied("a target device lies outside your region scope")


def check_decide(role: str, name: str, sees_region: Callable[[str], bool], action: LinkageAction) -> None:
    """The confirm / decline guard: an admin whose scope covers the device, not the proposer."""
    if role not in CONFIRMERS:
        raise ActionDenied(f"confirming or declining a linkage action needs the role {' or '.join(CONFIRMERS)}")
    if not sees_region(action.region_id):
        raise ActionDenied(f"device {action.device_id} lies outside your region scope")
    if action.proposed_by == name:
        raise ActionDenied("a linkage action must be confirmed by someone other than its proposer")


# --- the book (pure) --------------------------------------------------------------------------------------------


class ActionBook:
    """Every linkage action by id, with the command ids of those sent. Pure: ``now`` comes in."""

    def __init__(self, policy: ActionPolicy | None = None, *, new_id: Callable[[], str] | None = None) -> None:
        self.policy = policy or ActionPolicy()
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self.actions: dict[str, LinkageAction] = {}
        self._by_cmd: dict[str, str] = {}
        self._waiting: set[str] = set()  # ids of actions sent and not answered, not expired

    def get(self, action_id: str) -> LinkageAction | None:
        return self.actions.get(action_id)

    @property
    def awaiting(self) -> bool:
        """Whether a command is out without its answer (ingest's listener has nothing to look for otherwise)."""
        return bool(self._waiting)

    def for_incident(self, incident_id: int) -> list[LinkageAction]:
        return sorted(
            (a for a in self.actions.values() if a.incident_id == incident_id), key=lambda a: (a.proposed_at, a.id)
        )

    def _put(self, a: LinkageAction) -> LinkageAction:
        self.actions[a.id] = a
        if a.cmd_id is not None:
            self._by_cmd[a.cmd_id] = a.id
        if a.state == "sent":
            self._waiting.add(a.id)
        else:
            self._waiting.discard(a.id)
        return a

    def replay(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Rebuild from stored action documents (the timeline, oldest first): the last state of each wins."""
        n = 0
        for doc in docs:
            try:
                self._put(LinkageAction.from_doc(doc))
                n += 1
            except (KeyError, TypeError, ValueError):
                logger.warning("linkage action record skipped: %r", doc.get("id"))
        return n

    def propose(
        self,
        incident_id: int,
        name: str,
        targets: Sequence[Target],
        *,
        by: str,
        now: datetime,
        reason: str = "",
        args: Mapping[str, Any] | None = None,
    ) -> list[LinkageAction]:
        """One action per target; ``UserError`` for an unknown command, no target, too many, or a target whose type
        does not obey the command. A device with an open action of the same name is not proposed twice."""
        obeying = COMMANDS.get(name)
        if obeying is None:
            raise UserError(f"unknown linkage command {name!r}; one of {', '.join(sorted(COMMANDS))}")
        if not targets:
            raise UserError("no device to send the command to")
        if len(targets) > MAX_TARGETS:
            raise UserError(f"at most {MAX_TARGETS} devices per proposal")
        wrong = [t.device_id for t in targets if t.device_type not in obeying]
        if wrong:
            raise UserError(f"{name} applies to {', '.join(sorted(obeying))} devices, not {', '.join(wrong[:5])}")
        busy = {
            a.device_id for a in self.actions.values() if a.incident_id == incident_id and a.name == name and a.open
        }
        out: list[LinkageAction] = []
        for t in dict.fromkeys(targets):
            if t.device_id in busy:
                continue
            out.append(
                self._put(
                    LinkageAction(
                        id=self._new_id(),
                        incident_id=incident_id,
                        name=name,
                        device_id=t.device_id,
                        region_id=t.region_id,
                        state="proposed",
                        proposed_by=by,
                        proposed_at=now,
                        reason=reason,
                        args=dict(args or {}),
                        expires_at=now + self.policy.proposal_ttl,
                    )
                )
            )
        return out

    def _open(self, action_id: str, now: datetime) -> LinkageAction:
        a = self.actions.get(action_id)
        if a is None:
            raise KeyError(action_id)
        if a.state != "proposed":
            raise ActionConflict(f"linkage action {action_id} is {a.state}, not proposed")
        if a.expires_at is not None and now >= a.expires_at:
            raise ActionConflict(f"linkage action {action_id} expired at {_iso(a.expires_at)}")
        return a

    def confirm(self, action_id: str, *, by: str, now: datetime) -> LinkageAction:
        """Confirmed: it gets its command id and the command's expiry; the caller publishes it (``sent``)."""
        a = self._open(action_id, now)
        return self._put(
            replace(
                a,
                state="sent",
                decided_by=by,
                decided_at=now,
                cmd_id=str(uuid.uuid4()),  # PROTOCOL.md: a uuid
                sent_at=now,
                expires_at=now + self.policy.command_ttl,
            )
        )

    def decline(self, action_id: str, *, by: str, now: datetime, reason: str = "") -> LinkageAction:
        a = self._open(action_id, now)
        return self._put(replace(a, state="declined", decided_by=by, decided_at=now, decline_reason=reason or None))

    def unsent(self, action_id: str, detail: str, now: datetime) -> LinkageAction:
        """The broker did not take the command: failed at once (a person may propose it again)."""
        a = self.actions[action_id]
        return self._put(replace(a, state="failed", result_ok=False, result_detail=detail, result_at=now))

    def result(self, device_id: str, cmd_id: str, ok: bool, detail: str, now: datetime) -> LinkageAction | None:
        """A ``cmd_result`` event. Unknown command ids, another device's, or a second answer: None. An answer
        after the command expired is still recorded (the device did act), with its state."""
        action_id = self._by_cmd.get(cmd_id)
        a = self.actions.get(action_id) if action_id is not None else None
        if a is None or a.device_id != device_id or a.result_ok is not None:
            return None
        state: ActionState = "succeeded" if ok else "failed"
        return self._put(replace(a, state=state, result_ok=ok, result_detail=detail[:500], result_at=now))

    def expire(self, now: datetime) -> list[LinkageAction]:
        """Proposals nobody decided on, and commands nobody answered, past their ``expires_at``."""
        out: list[LinkageAction] = []
        for a in list(self.actions.values()):
            if a.open and a.expires_at is not None and now >= a.expires_at:
                detail = "not decided in time" if a.state == "proposed" else "no cmd_result before expires_at"
                out.append(self._put(replace(a, state="expired", result_detail=detail)))
        return out


# --- the adapter ------------------------------------------------------------------------------------------------

Step = Literal["proposed", "confirmed", "declined", "sent", "unsent", "result", "expired"]
RecordSink = Callable[[LinkageAction, Step, str], None]  # (action, step, actor)
Publish = Callable[[str, bytes], bool]  # (topic, payload) -> taken by the broker's client


class MqttCommandSender:
    """Publishes commands with the platform's identity (its role has ``publishClientSend`` on ``lf/v1/+/cmd``),
    through ``ingest.resend.CommandLink``: the link of the running resend manager when given, else its own."""

    def __init__(
        self, settings: MqttSettings | None = None, *, link: CommandLink | None = None, client_id: str | None = None
    ) -> None:
        if link is None:
            if settings is None:
                raise ValueError("MqttCommandSender needs mqtt settings or a CommandLink")
            link = CommandLink(settings, client_id or f"{settings.client_id}-actions")
            self._owned = True
        else:
            self._owned = False
        self.link = link

    def start(self) -> None:
        if self._owned:
            self.link.start()

    def connected(self) -> bool:
        return bool(self.link.client.is_connected())

    def __call__(self, topic: str, payload: bytes) -> bool:
        if not self.link.client.is_connected():
            return False
        info = self.link.client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        if self._owned:
            self.link.stop()


class LinkageActions:
    """The running side: proposals, decisions, commands out, results in (``on_batch``), expiries (``tick``).

    Thread-safe; ``record`` and ``audit`` are called outside the lock, after the state changed."""

    def __init__(
        self,
        publish: Publish,
        *,
        record: RecordSink | None = None,
        audit: RecordSink | None = None,
        policy: ActionPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tick_s: float = 1.0,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.book = ActionBook(policy, new_id=new_id)
        self._publish = publish
        self._record = record
        self._audit = audit
        self.clock = clock
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._late_until: datetime | None = None
        # A command's steps are recorded in the order they happened: a device may answer (on ingest's thread)
        # before ``confirm`` has recorded "sent"; its "result" waits for that.
        self._steps_in_order = threading.Lock()

    # --- reads ------------------------------------------------------------------------------------------

    def get(self, action_id: str) -> LinkageAction | None:
        with self._lock:
            return self.book.get(action_id)

    def for_incident(self, incident_id: int) -> list[LinkageAction]:
        with self._lock:
            return self.book.for_incident(incident_id)

    def replay(self, docs: Iterable[Mapping[str, Any]]) -> int:
        with self._lock:
            return self.book.replay(docs)

    # --- steps ------------------------------------------------------------------------------------------

    def _tell(self, changes: Sequence[tuple[LinkageAction, Step, str]]) -> None:
        for action, step, actor in changes:
            for sink in (self._record, self._audit):
                if sink is None:
                    continue
                try:
                    sink(action, step, actor)
                except Exception:
                    logger.exception("linkage action %s: recording step %s failed", action.id, step)

    def propose(
        self,
        incident_id: int,
        name: str,
        targets: Sequence[Target],
        *,
        by: str,
        reason: str = "",
        args: Mapping[str, Any] | None = None,
    ) -> list[LinkageAction]:
        now = self.clock()
        with self._lock:
            made = self.book.propose(incident_id, name, targets, by=by, now=now, reason=reason, args=args)
        self._tell([(a, "proposed", by) for a in made])
        return made

    def confirm(self, action_id: str, *, by: str) -> LinkageAction:
        """Confirm and publish; the answer is ``sent``, or ``failed`` when the broker did not take it."""
        now = self.clock()
        with self._lock:
            sent = self.book.confirm(action_id, by=by, now=now)
        with self._steps_in_order:
            try:
                ok = self._publish(sent.topic, sent.command_payload())
            except Exception:
                logger.exception("linkage command %s to %s failed", sent.name, sent.device_id)
                ok = False
            steps: list[tuple[LinkageAction, Step, str]] = [(sent, "confirmed", by)]
            if ok:
                steps.append((sent, "sent", SYSTEM))
                final = sent
            else:
                with self._lock:
                    final = self.book.unsent(action_id, "the broker is unavailable; command not sent", self.clock())
                steps.append((final, "unsent", SYSTEM))
            self._tell(steps)
        logger.info("linkage command %s to %s confirmed by %s (%s)", sent.name, sent.device_id, by, final.state)
        return final

    def decline(self, action_id: str, *, by: str, reason: str = "") -> LinkageAction:
        now = self.clock()
        with self._lock:
            a = self.book.decline(action_id, by=by, now=now, reason=reason)
        self._tell([(a, "declined", by)])
        return a

    def on_batch(self, batch: WriteBatch) -> None:
        """BatchListener: ``cmd_result`` events answering our commands. Never raises."""
        try:
            if not self.book.awaiting and (self._late_until is None or self.clock() >= self._late_until):
                return  # nothing sent is waiting for an answer: no scan of the batch on ingest's path
            results = [e for e in batch.events if e.type == "cmd_result"]
            if not results:
                return
            now = self.clock()
            changed: list[tuple[LinkageAction, Step, str]] = []
            with self._lock:
                for ev in results:
                    cmd_id, ok = ev.data.get("cmd_id"), ev.data.get("ok")
                    if not isinstance(cmd_id, str) or not isinstance(ok, bool):
                        continue
                    a = self.book.result(ev.device_id, cmd_id, ok, str(ev.data.get("detail") or ""), now)
                    if a is not None:
                        changed.append((a, "result", ev.device_id))
            if changed:
                with self._steps_in_order:
                    self._tell(changed)
        except Exception:
            logger.exception("linkage actions: reading a batch's cmd_result events failed")

    def tick(self, now: datetime | None = None) -> list[LinkageAction]:
        at = self.clock() if now is None else now
        with self._lock:
            expired = self.book.expire(at)
        if any(a.cmd_id is not None for a in expired):
            self._late_until = at + LATE_ANSWERS  # a device may still answer: keep looking a while
        self._tell([(a, "expired", SYSTEM) for a in expired])
        return expired

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="joint-actions", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:
                logger.exception("linkage actions: tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


STEP_TEXT: dict[Step, tuple[str, str]] = {
    "proposed": ("建议联动：{name} {device}", "Proposed: {name} {device}"),
    "confirmed": ("已确认联动：{name} {device}", "Confirmed: {name} {device}"),
    "declined": ("已拒绝联动：{name} {device}", "Declined: {name} {device}"),
    "sent": ("指令已下发：{name} {device}", "Command sent: {name} {device}"),
    "unsent": ("指令未能下发：{name} {device}", "Command not sent: {name} {device}"),
    "result": ("设备回执：{name} {device} {outcome}", "Device answered: {name} {device} {outcome}"),
    "expired": ("联动已过期：{name} {device}", "Expired: {name} {device}"),
}
COMMAND_LABEL = {"lock": ("锁闭", "lock"), "unlock": ("解锁", "unlock")}


def gate_targets(registry: Registry, region_id: str) -> list[Target]:
    """The enabled gates of a region's subtree (at most 200): what an incident's automatic lock proposal targets."""
    devices, _ = registry.devices(region_ids=registry.subtree_ids(region_id), device_type="gate", limit=200)
    return [Target(d.id, d.region_id, d.type) for d in devices if d.enabled]


def step_text(action: LinkageAction, step: Step) -> str:
    """The timeline line of a step (Chinese; the English is in the entry's data for the page's switch)."""
    zh, _en = STEP_TEXT[step]
    outcome = "成功" if action.result_ok else f"失败（{action.result_detail or ''}）"
    return zh.format(name=COMMAND_LABEL.get(action.name, (action.name,))[0], device=action.device_id, outcome=outcome)


def step_text_en(action: LinkageAction, step: Step) -> str:
    _zh, en = STEP_TEXT[step]
    outcome = "ok" if action.result_ok else f"failed ({action.result_detail or ''})"
    return en.format(name=action.name, device=action.device_id, outcome=outcome)
