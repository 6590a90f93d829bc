"""A cheaper receive and acknowledge path for the ingest session, on paho-mqtt's own extension points.

paho-mqtt reads every packet with at least three ``recv`` system calls (the command byte, each remaining-length
byte, then the body) and sends every PUBACK as its own packet: a wake-up byte to its network thread and a ``send``
per acknowledgement. At thousands of messages a second that is most of paho's cost, and each of those calls also
hands the GIL to another thread. Two changes, both inside paho's documented behaviour:

- ``BufferedSocket`` wraps the connected socket (plain or TLS): one ``recv`` fills a 64 KiB buffer that the
  following packet reads are served from. It exposes ``pending()``, the hook paho already uses for TLS sockets
  (bytes buffered in user space): while it is non-zero paho's loop does not block in ``select`` and keeps reading.
- ``IngestClient.ack_many`` queues the PUBACKs of a whole batch as one write: the same bytes on the wire as
  separate ``ack()`` calls (MQTT v5 PUBACK, reason "success" implied by the two-byte form), in the same order,
  with one wake-up and one ``send``.

``ack_many`` uses paho's internal packet queue, so it is version-gated like ``ingest/paho_speedups.py``: on a
paho version it was not verified with, it falls back to ``ack()`` per message. tests/ingest/test_paho_transport.py
checks both against a real Mosquitto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from ingest.paho_speedups import VERIFIED_VERSIONS

READ_CHUNK = 65536
PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")


class BufferedSocket:
    """A socket whose ``recv`` is served from a user-space buffer filled ``READ_CHUNK`` bytes at a time.

    Everything else (``send``, ``fileno``, ``setblocking``, ``close``...) is the wrapped socket's own."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data: bytes = self._sock.recv(max(bufsize, READ_CHUNK))  # raises BlockingIOError when empty
            if len(data) <= bufsize:
                return data  # also b"" at end of stream
            self._buf, self._pos = data, bufsize
            return data[:bufsize]
        end = min(pos + bufsize, len(buf))
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        """Bytes already received and not read yet (plus what a TLS layer holds): paho keeps reading while > 0."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class IngestClient(mqtt.Client):
    """paho's client with the buffered socket and batch acknowledgements."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet already buffered, not one per pass of paho's loop (a ``select`` and its bookkeeping
        each). Stops at the first error, or when the buffer holds no more bytes (a partial packet stays buffered
        by paho itself until its socket is readable again)."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, BufferedSocket) and sock.pending() > 0:
            if sock is not self._sock:  # reconnected meanwhile
                break
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, acks: Iterable[tuple[int, int]]) -> None:
        """Acknowledge (mid, qos) pairs in order (QoS 0 needs none). All QoS 1 PUBACKs go out as one write when
        the paho version is verified; otherwise, and for QoS 2, ``ack()`` each."""
        mids: list[int] = []
        for mid, qos in acks:
            if qos == 1 and BATCH_ACKS:
                mids.append(mid)
            elif qos > 0:
                self.ack(mid, qos)
        if mids and self._manual_ack:
            self._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids]), mids[-1], 1)


BATCH_ACKS = getattr(paho.mqtt, "__version__", "?") in VERIFIED_VERSIONS
