"""Resend (PROTOCOL.md v1.1): a gap in a device's ``seq`` is asked back with a ``resend`` command.

A record lost between the device's PUBACK and durable storage (a broker SIGKILL before its autosave, a broker
queue overflow) leaves a gap in the device's seq. The platform sees the gap when the device's next seq arrives (a
tail loss, the last records of a burst, is found the same way, with the next message), waits ``settle`` (records
of a broker backlog may arrive out of order), then sends ``{"cmd_id", "name": "resend", "args": {"from_seq",
"to_seq"}, "expires_at"}`` on ``lf/v1/{device}/cmd``. A device with a buffer republishes those records unchanged
(same seq, same ts) and answers a ``cmd_result`` event: ``ok: true`` and in ``detail`` the seqs it no longer had
(:func:`format_seq_ranges`), or ``ok: false`` when it keeps no buffer. The records that come back go through
ingest like any late record: stored once (dedup by seq, idempotent writes), alerted once (the alert engine's
replay guard, late data as today).

What cannot be recovered (no buffer, seqs no longer held, no answer after ``max_attempts`` tries, a jump too
large to ask for) is a :class:`Loss`: counted (``lianfang_ingest_seq_lost_total{reason}``, no device label),
recorded per device (``ResendManager.status()``, in ``/health`` ingest status) and handed to ``on_loss``
(the data-quality alert, ``alerts/data_quality.py``).

Two parts, as everywhere in Lianfang:

- :class:`GapBook`: the pure bookkeeping. No I/O, no clock: every call takes ``now_ms``; command ids come from an
  injected ``new_id``.
- :class:`ResendManager`: the adapter. A ``core.store.BatchListener`` that feeds the book from ingest batches (the
  records' seqs, seqs of rejected messages, ``cmd_result`` events), a thread that ticks it, and an MQTT client
  with the platform's identity (its role has ``publishClientSend`` on ``lf/v1/+/cmd``) that publishes the commands.

Limits: ranges of at most 10,000 seqs; a bounded number of commands per second (token bucket) and of open
requests per device; a gap larger than ``max_gap`` is not asked for. With a shared subscription
(``mqtt.shared_group``) each ingest process sees only part of a device's seqs, so resend stays off there.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.protocol import Event, Reading, topic_for
from core.settings import MqttSettings, ResendSettings
from core.store import WriteBatch
from ingest import metrics

logger = logging.getLogger(__name__)

MAX_RANGE = 10_000  # PROTOCOL.md v1.1: a resend asks for at most this many seqs
LOSS_REASONS = ("no_buffer", "not_held", "no_answer", "not_received", "too_large", "too_many_gaps", "counter_restart")
for _reason in LOSS_REASONS:
    metrics.SEQ_LOST.labels(_reason)


# --- seq range text (cmd_result detail) -------------------------------------------------------------------------


def format_seq_ranges(seqs: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3,7,9-10"`` (the ``detail`` of a resend's ``cmd_result``)."""
    out: list[str] = []
    run: list[int] = []
    for s in sorted(set(seqs)):
        if run and s == run[1] + 1:
            run[1] = s
            continue
        if run:
            out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
        run = [s, s]
    if run:
        out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
    return ",".join(out)


def parse_seq_ranges(text: str, *, limit: int = MAX_RANGE) -> list[tuple[int, int]]:
    """``"1-3,7"`` -> ``[(1, 3), (7, 7)]``; anything that is not such a list (or covers more than ``limit`` seqs)
    gives what parsed before it. Never raises: the text comes from a device."""
    out: list[tuple[int, int]] = []
    total = 0
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            break
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            break
        total += b - a + 1
        if total > limit:
            break
        out.append((a, b))
    return out


# --- the pure bookkeeping ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    settle_ms: int = 5_000  # a gap stays open this long before it is asked for (a backlog arriving out of order)
    answer_timeout_ms: int = 60_000  # no cmd_result within this: ask again
    max_attempts: int = 3  # commands per gap before it counts as lost (no_answer)
    max_range: int = MAX_RANGE
    max_gap: int = 100_000  # missing seqs tracked per device; a larger jump is lost at once (too_large)
    max_gaps: int = 1_000  # separate gaps tracked per device; more are lost at once (too_many_gaps)
    max_open_requests: int = 4  # per device
    # Seqs asked for and not yet answered, all devices together: the records come back through the broker's queue
    # for ingest, which must not overflow with them.
    max_outstanding_seqs: int = 20_000
    commands_per_s: float = 50.0  # token bucket, all devices together
    burst: int = 200
    restart_window: int = 10_000  # a seq this far below the highest (and not missing) is a counter restart
    no_buffer_backoff_ms: int = 3_600_000  # after ok:false, gaps of that device are lost without asking

    def __post_init__(self) -> None:
        if not 1 <= self.max_range <= MAX_RANGE:
            raise ValueError(f"max_range must be between 1 and {MAX_RANGE}")
        if self.max_attempts < 1 or self.max_open_requests < 1 or self.commands_per_s <= 0 or self.burst < 1:
            raise ValueError("max_attempts, max_open_requests, commands_per_s and burst must be positive")

    @classmethod
    def from_settings(cls, s: ResendSettings) -> ResendPolicy:
        return cls(
            settle_ms=int(s.settle_s * 1000),
            answer_timeout_ms=int(s.answer_timeout_s * 1000),
            max_attempts=s.max_attempts,
            max_gap=s.max_gap,
            commands_per_s=s.commands_per_s,
        )


@dataclass(frozen=True, slots=True)
class ResendCommand:
    device_id: str
    cmd_id: str
    from_seq: int
    to_seq: int
    expires_at_ms: int
    attempt: int

    @property
    def topic(self) -> str:
        return topic_for(self.device_id, "cmd")

    def payload(self) -> bytes:
        return orjson.dumps(
            {
                "cmd_id": self.cmd_id,
                "name": "resend",
                "args": {"from_seq": self.from_seq, "to_seq": self.to_seq},
                "expires_at": self.expires_at_ms,
            }
        )


@dataclass(frozen=True, slots=True)
class Loss:
    """Seqs ``from_seq..to_seq`` (inclusive) of a device that will not be recovered, and why."""

    device_id: str
    from_seq: int
    to_seq: int
    reason: str
    at_ms: int
    records: int | None = None  # several losses reported as one: how many seqs (the range spans them all)

    @property
    def count(self) -> int:
        return self.records if self.records is not None else self.to_seq - self.from_seq + 1

    @property
    def range_text(self) -> str:
        return str(self.from_seq) if self.from_seq == self.to_seq else f"{self.from_seq}-{self.to_seq}"


@dataclass(slots=True)
class _Gap:
    a: int
    b: int
    since_ms: int
    attempts: int = 0
    cmd_id: str | None = None  # the open request covering it


@dataclass(slots=True)
class _Request:
    device_id: str
    a: int
    b: int
    sent_ms: int
    attempt: int
    answered_ms: int | None = None


@dataclass(slots=True)
class _Device:
    high: int = -1
    gaps: list[_Gap] = field(default_factory=list)  # sorted, disjoint
    missing: int = 0
    requests: set[str] = field(default_factory=set)
    no_buffer_until_ms: int = 0
    recent_lost: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=32))
    lost: int = 0
    recovered: int = 0
    late: int = 0  # records that arrived after their seqs were counted lost

    def find(self, seq: int) -> int:
        """Index of the gap holding ``seq``, or -1."""
        i = bisect.bisect_right(self.gaps, seq, key=lambda g: g.a) - 1
        return i if i >= 0 and self.gaps[i].b >= seq else -1


class GapBook:
    """Per-device seq bookkeeping: gaps, open resend requests, what is lost. Pure (``now_ms`` comes in)."""

    def __init__(self, policy: ResendPolicy | None = None, *, new_id: Callable[[], str] | None = None) -> None:
        self.policy = policy or ResendPolicy()
        self._new_id = new_id or (lambda: str(uuid.uuid4()))
        self.devices: dict[str, _Device] = {}
        self.requests: dict[str, _Request] = {}
        self._work: set[str] = set()  # devices with gaps not yet asked for
        self._tokens = float(self.policy.burst)
        self._tokens_ms: int | None = None
        self.sent = 0
        self.recovered = 0

    # --- arrivals ----------------------------------------------------------------------------------------

    def _device(self, device_id: str) -> _Device:
        d = self.devices.get(device_id)
        if d is None:
            d = self.devices[device_id] = _Device()
        return d

    def warm(self, device_id: str, seq: int) -> None:
        """A seq already durable before this process started: only the highest one matters."""
        d = self._device(device_id)
        d.high = max(d.high, seq)

    def observe(self, device_id: str, seq: int, now_ms: int) -> list[Loss]:
        """A record with ``seq`` reached ingest (stored, or rejected: either way it is not missing)."""
        d = self._device(device_id)
        if d.high < 0:
            d.high = seq
            return []
        if seq > d.high:
            losses: list[Loss] = []
            if seq > d.high + 1:
                a, b = d.high + 1, seq - 1
                if d.missing + (b - a + 1) > self.policy.max_gap:
                    losses.append(self._lost(device_id, d, a, b, "too_large", now_ms))
                elif len(d.gaps) >= self.policy.max_gaps:
                    losses.append(self._lost(device_id, d, a, b, "too_many_gaps", now_ms))
                else:
                    d.gaps.append(_Gap(a, b, now_ms))
                    d.missing += b - a + 1
                    self._work.add(device_id)
            d.high = seq
            return losses
        i = d.find(seq)
        if i >= 0:
            self._fill(d, i, seq)
            return []
        if any(a <= seq <= b for a, b in d.recent_lost):
            d.late += 1
            return []
        if seq < d.high - self.policy.restart_window:
            # The device restarted its counter: what it had not resent is gone with its old numbering.
            losses = [self._lost(device_id, d, g.a, g.b, "counter_restart", now_ms) for g in d.gaps]
            self._drop_gaps(d, d.gaps)
            d.high = seq
            return losses
        return []  # a duplicate or a late record outside any gap

    def _fill(self, d: _Device, i: int, seq: int) -> None:
        g = d.gaps[i]
        d.missing -= 1
        d.recovered += 1
        self.recovered += 1
        if g.a == g.b:
            del d.gaps[i]
        elif seq == g.a:
            g.a += 1
        elif seq == g.b:
            g.b -= 1
        else:
            d.gaps.insert(i + 1, _Gap(seq + 1, g.b, g.since_ms, g.attempts, g.cmd_id))
            g.b = seq - 1

    def _drop_gaps(self, d: _Device, gaps: list[_Gap]) -> None:
        drop = {id(g) for g in gaps}
        d.missing -= sum(g.b - g.a + 1 for g in gaps)
        d.gaps = [g for g in d.gaps if id(g) not in drop]

    def _lost(self, device_id: str, d: _Device, a: int, b: int, reason: str, now_ms: int) -> Loss:
        d.lost += b - a + 1
        d.recent_lost.append((a, b))
        return Loss(device_id, a, b, reason, now_ms)

    def _lose_within(self, device_id: str, a: int, b: int, reason: str, now_ms: int) -> list[Loss]:
        """Every seq of ``a..b`` still missing is lost."""
        d = self._device(device_id)
        inside = [g for g in d.gaps if g.a <= b and g.b >= a]
        losses: list[Loss] = []
        for g in inside:
            lo, hi = max(g.a, a), min(g.b, b)
            losses.append(self._lost(device_id, d, lo, hi, reason, now_ms))
            d.missing -= hi - lo + 1
            if g.a < lo:  # the part below stays open
                d.gaps.insert(d.gaps.index(g), _Gap(g.a, lo - 1, g.since_ms, g.attempts, g.cmd_id))
            if g.b > hi:
                g.a = hi + 1
            else:
                d.gaps.remove(g)
        return losses

    # --- answers -----------------------------------------------------------------------------------------

    def answer(self, device_id: str, cmd_id: str, ok: bool, detail: str, now_ms: int) -> list[Loss]:
        """The device's ``cmd_result`` for a resend. Unknown or foreign command ids are ignored."""
        req = self.requests.get(cmd_id)
        if req is None or req.device_id != device_id or req.answered_ms is not None:
            return []
        d = self._device(device_id)
        if not ok:
            self._close(cmd_id)
            d.no_buffer_until_ms = now_ms + self.policy.no_buffer_backoff_ms
            return self._lose_within(device_id, req.a, req.b, "no_buffer", now_ms)
        req.answered_ms = now_ms
        losses: list[Loss] = []
        for a, b in parse_seq_ranges(detail, limit=req.b - req.a + 1):
            losses.extend(self._lose_within(device_id, max(a, req.a), min(b, req.b), "not_held", now_ms))
        if not any(g.cmd_id == cmd_id for g in d.gaps):
            self._close(cmd_id)  # everything came back (or is accounted for): done at once
        return losses

    def _close(self, cmd_id: str) -> _Request | None:
        req = self.requests.pop(cmd_id, None)
        if req is None:
            return None
        d = self._device(req.device_id)
        d.requests.discard(cmd_id)
        for g in d.gaps:
            if g.cmd_id == cmd_id:
                g.cmd_id = None
                self._work.add(req.device_id)
        return req

    # --- time --------------------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> tuple[list[ResendCommand], list[Loss]]:
        """Commands to send now and what became lost: answered requests whose records did not all come back
        within ``settle``, requests unanswered after the timeout (asked again, or lost after ``max_attempts``),
        and new gaps, settled, asked for within the command budget."""
        p = self.policy
        losses: list[Loss] = []
        for cmd_id, req in list(self.requests.items()):
            answered = req.answered_ms is not None
            due = (req.answered_ms or 0) + p.settle_ms if answered else req.sent_ms + p.answer_timeout_ms
            if now_ms < due:
                continue
            # Unanswered, or answered but records are still missing (resent, then dropped again by an overflowing
            # broker queue, say): ask again, or give up after max_attempts.
            self._close(cmd_id)
            if req.attempt >= p.max_attempts:
                reason = "not_received" if answered else "no_answer"
                losses.extend(self._lose_within(req.device_id, req.a, req.b, reason, now_ms))
                continue
            for g in self._device(req.device_id).gaps:
                if g.a <= req.b and g.b >= req.a:
                    g.since_ms = min(g.since_ms, now_ms - p.settle_ms)  # ask again at once
        self._refill(now_ms)
        outstanding = sum(r.b - r.a + 1 for r in self.requests.values())
        commands: list[ResendCommand] = []
        for device_id in sorted(self._work):
            d = self.devices[device_id]
            idle = True
            for g in list(d.gaps):
                if g.cmd_id is not None:
                    continue
                if now_ms < g.since_ms + p.settle_ms:
                    idle = False
                    continue
                if d.no_buffer_until_ms > now_ms:
                    losses.extend(self._lose_within(device_id, g.a, g.b, "no_buffer", now_ms))
                    continue
                size = min(g.b - g.a + 1, p.max_range)
                if (
                    len(d.requests) >= p.max_open_requests
                    or self._tokens < 1
                    or (outstanding and outstanding + size > p.max_outstanding_seqs)
                ):
                    idle = False
                    break
                if g.b - g.a + 1 > p.max_range:  # ask for the first max_range seqs; the rest is its own gap
                    rest = _Gap(g.a + p.max_range, g.b, g.since_ms, g.attempts)
                    g.b = g.a + p.max_range - 1
                    d.gaps.insert(d.gaps.index(g) + 1, rest)
                    idle = False
                outstanding += size
                g.attempts += 1
                g.cmd_id = self._new_id()
                self.requests[g.cmd_id] = _Request(device_id, g.a, g.b, now_ms, g.attempts)
                d.requests.add(g.cmd_id)
                self._tokens -= 1
                self.sent += 1
                commands.append(ResendCommand(device_id, g.cmd_id, g.a, g.b, now_ms + p.answer_timeout_ms, g.attempts))
            if idle:
                self._work.discard(device_id)
        return commands, losses

    def _refill(self, now_ms: int) -> None:
        if self._tokens_ms is not None:
            elapsed = max(0, now_ms - self._tokens_ms) / 1000
            self._tokens = min(float(self.policy.burst), self._tokens + elapsed * self.policy.commands_per_s)
        self._tokens_ms = now_ms

    # --- reading -----------------------------------------------------------------------------------------

    def missing(self, device_id: str) -> list[tuple[int, int]]:
        d = self.devices.get(device_id)
        return [(g.a, g.b) for g in d.gaps] if d is not None else []

    @property
    def missing_total(self) -> int:
        return sum(d.missing for d in self.devices.values())

    def device_report(self) -> dict[str, dict[str, Any]]:
        """Devices with something to report: missing now, lost, recovered, the last lost ranges."""
        out: dict[str, dict[str, Any]] = {}
        for device_id, d in self.devices.items():
            if d.missing or d.lost or d.recovered:
                out[device_id] = {
                    "missing": d.missing,
                    "open_requests": len(d.requests),
                    "recovered": d.recovered,
                    "lost": d.lost,
                    "late": d.late,
                    "lost_ranges": [f"{a}-{b}" if a != b else str(a) for a, b in d.recent_lost],
                }
        return out


# --- the adapter ------------------------------------------------------------------------------------------------


def merge_losses(losses: list[Loss]) -> Loss:
    """Several losses of one device as one: the range spanning them, the seqs they count, their reasons."""
    if len(losses) == 1:
        return losses[0]
    reasons = sorted({x.reason for x in losses})
    return Loss(
        losses[0].device_id,
        min(x.from_seq for x in losses),
        max(x.to_seq for x in losses),
        ",".join(reasons),
        max(x.at_ms for x in losses),
        sum(x.count for x in losses),
    )


def _seqs_in_payload(payload: bytes) -> list[int]:
    """The seqs of a rejected message's objects (best effort: a cut payload or a non-object yields none)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    items = doc if isinstance(doc, list) else [doc]
    return [s for o in items if isinstance(o, dict) and type(s := o.get("seq")) is int and 0 <= s < 2**63]


LossHandler = Callable[[Loss, str, str], None]  # (loss, region_id, device_type)


class CommandLink:
    """The platform's MQTT connection for commands (``{client_id}-cmd``); QoS 1, paho's network thread."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(settings.username, settings.password.get_secret_value())
        if settings.tls_ca is not None:
            self.client.tls_set(ca_certs=str(settings.tls_ca))
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.settings = settings

    def start(self) -> None:
        # connect_async: a broker that is down now is retried by the network thread.
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()

    def send(self, cmd: ResendCommand) -> bool:
        if not self.client.is_connected():
            return False
        info = self.client.publish(cmd.topic, cmd.payload(), qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ResendManager:
    """Feeds a :class:`GapBook` from ingest batches (``on_batch``), ticks it on a thread, sends its commands and
    reports its losses. ``send`` and ``clock_ms`` are seams for tests; by default a :class:`CommandLink`."""

    def __init__(
        self,
        policy: ResendPolicy | None = None,
        *,
        mqtt_settings: MqttSettings | None = None,
        send: Callable[[ResendCommand], bool] | None = None,
        on_loss: LossHandler | None = None,
        tick_s: float = 1.0,
        alert_interval_s: float = 600.0,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        new_id: Callable[[], str] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.book = GapBook(policy, new_id=new_id)
        self.on_loss = on_loss
        self.alert_interval_ms = int(alert_interval_s * 1000)
        self._pending: dict[str, list[Loss]] = {}
        self._alerted_ms: dict[str, int] = {}
        self._loss_lock = threading.Lock()
        self.tick_s = tick_s
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._info: dict[str, tuple[str, str]] = {}  # device -> (region_id, device_type), from its records
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link: CommandLink | None = None
        if send is None:
            if mqtt_settings is None:
                raise ValueError("ResendManager needs mqtt_settings or a send function")
            self.link = CommandLink(mqtt_settings, client_id or f"{mqtt_settings.client_id}-cmd")
            send = self.link.send
        self._send = send
        self.unsent = 0

    def warm(self, recent: Iterable[tuple[str, int, int]]) -> None:
        """``TelemetryStore.recent_seqs`` rows (device, seq, ts): the highest seq per device is where gaps start."""
        with self._lock:
            for device_id, seq, _ts in recent:
                self.book.warm(device_id, seq)

    def on_batch(self, batch: WriteBatch) -> None:
        """The BatchListener: every seq that reached ingest, and the answers to resend commands. Never raises."""
        try:
            self._on_batch(batch)
        except Exception:
            logger.exception("resend bookkeeping failed for a batch of %d records", len(batch))

    def _on_batch(self, batch: WriteBatch) -> None:
        now = self._clock_ms()
        seen: dict[str, list[int]] = {}
        answers: list[Event] = []
        records: list[Reading | Event] = [*batch.readings, *batch.events]
        for rec in records:
            if rec.seq is not None:
                seen.setdefault(rec.device_id, []).append(rec.seq)
            if rec.device_id not in self._info:
                self._info[rec.device_id] = (rec.region_id, rec.device_type)
        for ev in batch.events:
            if ev.type == "cmd_result":
                answers.append(ev)
        for rej in batch.rejections:
            if rej.device_id in self._info or rej.device_id in self.book.devices:
                for s in _seqs_in_payload(rej.payload):
                    seen.setdefault(rej.device_id, []).append(s)
        losses: list[Loss] = []
        with self._lock:
            for device_id, seqs in seen.items():
                for s in sorted(seqs):
                    losses.extend(self.book.observe(device_id, s, now))
            for ev in answers:
                cmd_id, ok, detail = ev.data.get("cmd_id"), ev.data.get("ok"), ev.data.get("detail", "")
                if isinstance(cmd_id, str) and isinstance(ok, bool):
                    losses.extend(self.book.answer(ev.device_id, cmd_id, ok, str(detail or ""), now))
        self._report(losses, now)

    def tick(self, now_ms: int | None = None) -> list[ResendCommand]:
        """One pass: send what is due, report what is lost. Returns the commands sent."""
        now = self._clock_ms() if now_ms is None else now_ms
        with self._lock:
            commands, losses = self.book.tick(now)
            metrics.SEQ_MISSING.set(self.book.missing_total)
        for cmd in commands:
            try:
                ok = self._send(cmd)
            except Exception:
                logger.exception("resend command to %s failed", cmd.device_id)
                ok = False
            if ok:
                metrics.RESEND_COMMANDS.inc()
            else:
                self.unsent += 1  # asked again after the answer timeout
        if commands:
            logger.info(
                "resend: asked %d devices for %d seqs",
                len({c.device_id for c in commands}),
                sum(c.to_seq - c.from_seq + 1 for c in commands),
            )
        self._report(losses, now)
        return commands

    def _report(self, losses: list[Loss], now: int) -> None:
        """Count every loss at once; tell ``on_loss`` (the alert) at most once per device per ``alert_interval_ms``,
        the losses in between merged into one range (a device that loses a record every minute must not raise an
        alert every minute)."""
        with self._loss_lock:
            for loss in losses:
                metrics.SEQ_LOST.labels(loss.reason).inc(loss.count)
                self._pending.setdefault(loss.device_id, []).append(loss)
            every = self.alert_interval_ms
            due = [d for d in self._pending if now >= self._alerted_ms.get(d, -every) + every]
            merged = [merge_losses(self._pending.pop(d)) for d in due]
            for loss in merged:
                self._alerted_ms[loss.device_id] = now
        for loss in merged:
            logger.warning(
                "device %s: seqs %s lost (%s), %d records", loss.device_id, loss.range_text, loss.reason, loss.count
            )
            if self.on_loss is None:
                continue
            region_id, device_type = self._info.get(loss.device_id, ("", ""))
            try:
                self.on_loss(loss, region_id, device_type)
            except Exception:
                logger.exception("data-quality report of %s failed", loss.device_id)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.link is not None:
            self.link.start()
        self._thread = threading.Thread(target=self._run, name="ingest-resend", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:
                logger.exception("resend tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.link is not None:
            self.link.stop()

    def status(self, max_devices: int = 50) -> dict[str, Any]:
        """Totals, and per device (at most ``max_devices``, most lost then most missing first) what is missing,
        recovered and lost, with the last lost ranges."""
        with self._lock:
            devices = self.book.device_report()
            missing = self.book.missing_total
            open_requests, sent, recovered = len(self.book.requests), self.book.sent, self.book.recovered
        worst = sorted(devices, key=lambda d: (-devices[d]["lost"], -devices[d]["missing"], d))[:max_devices]
        return {
            "missing": missing,
            "open_requests": open_requests,
            "commands_sent": sent,
            "unsent": self.unsent,
            "recovered": recovered,
            "lost": sum(d["lost"] for d in devices.values()),
            "devices_reporting": len(devices),
            "devices": {d: devices[d] for d in worst},
        }
