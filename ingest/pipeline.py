"""The per-message path, one straight line: topic -> retained? -> device -> decode -> dedup -> batch.

Pure: no I/O, no clock (``now_ms`` comes in). A message that raises anywhere in here is rejected with
``internal_error`` and never affects the messages around it. The seqs a batch stages in the duplicate tracker
are listed in ``batch.seqs``: the caller commits them once the batch is durable, or aborts them (ingest/dedup.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import InvalidMessage
from core.protocol import RAW_KEEP, DeviceInfo, Event, Reading, Record, Rejection, Status, check_device, parse_topic
from core.protocol import decode as decode_payload
from core.store import WriteBatch
from ingest.dedup import SeqTracker

logger = logging.getLogger(__name__)

Decoder = Callable[[str, bytes, DeviceInfo, int], tuple[list[Record], list[tuple[str, str]]]]


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ms: int
    # The MQTT retain flag as delivered: set only when the broker replays a retained message at subscription
    # (Lianfang subscribes without "retain as published").
    retain: bool = False
    # The MQTT DUP flag: the broker sends this message again (an earlier delivery was not acknowledged).
    redelivered: bool = False


def _reject(batch: WriteBatch, msg: RawMessage, device_id: str, reason: str, detail: str) -> None:
    batch.rejections.append(Rejection(device_id, msg.topic, reason, detail, msg.payload[:RAW_KEEP], msg.received_ms))
    batch.counter(device_id).rejected += 1


def rejection_batch(msg: RawMessage, reason: str, detail: str) -> WriteBatch:
    """A batch holding only the rejection of ``msg`` (e.g. ``internal_error`` when writing it failed)."""
    batch = WriteBatch()
    try:
        device_id = parse_topic(msg.topic)[0]
    except InvalidMessage:
        device_id = "?"
    _reject(batch, msg, device_id, reason, detail)
    return batch


def build_batch(
    messages: Sequence[RawMessage],
    devices: Mapping[str, DeviceInfo],
    seqs: SeqTracker,
    *,
    decode: Decoder = decode_payload,
    replays: list[Record] | None = None,
) -> WriteBatch:
    """Turn raw MQTT messages into one WriteBatch (records, rejections, per-device counters, staged seqs).

    ``replays`` collects the duplicates of messages the broker redelivered: their first copy may have been
    stored and never reached the alert engine (the process stopped in between), so they are forwarded to it
    anyway (ingest/forward.py); the engine's replay guard drops those it has seen."""
    batch = WriteBatch()
    staged = batch.seqs
    for msg in messages:
        device_id = "?"
        try:
            device_id, kind = parse_topic(msg.topic)
            if msg.retain and kind != "status":
                raise InvalidMessage("retained", f"a retained {kind} delivery (a broker replay) is not stored again")
            device = check_device(device_id, devices.get(device_id))
            records, errors = decode(kind, msg.payload, device, msg.received_ms)
        except InvalidMessage as exc:
            _reject(batch, msg, device_id, exc.reason, exc.detail)
            continue
        except Exception as exc:  # a bug must cost one message, never the stream
            logger.exception("message on %s raised in the pipeline; rejected", msg.topic)
            _reject(batch, msg, device_id, "internal_error", f"{type(exc).__name__}: {exc}"[:500])
            continue
        counter = batch.counter(device_id)
        counter.messages += 1
        if records:  # only an accepted message says the device is alive (not one whose objects all failed)
            counter.last_seen_ms = max(counter.last_seen_ms, msg.received_ms)
        for reason, detail in errors:
            _reject(batch, msg, device_id, reason, detail)
        for rec in records:
            if isinstance(rec, Status):
                batch.statuses.append(rec)
                continue
            if not rec.ts_from_device:
                rec.ts_ms = seqs.receive_ts(device_id, rec.ts_ms)
            if rec.seq is not None:
                dup, gap = seqs.check(device_id, rec.seq, rec.ts_ms if rec.ts_from_device else None, staged)
                if dup:
                    counter.duplicates += 1
                    if replays is not None and msg.redelivered:
                        replays.append(rec)
                    continue
                counter.gaps += gap
            if isinstance(rec, Reading):
                counter.nonstandard += rec.nonstandard
                batch.readings.append(rec)
            elif isinstance(rec, Event):
                batch.events.append(rec)
    return batch
