"""The Properties speedup changes nothing paho decodes or encodes."""

from __future__ import annotations

from collections.abc import Iterator

import paho.mqtt._packet as packet
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import paho_speedups


def _props_bytes() -> bytes:
    p = Properties(PacketTypes.PUBLISH)
    p.PayloadFormatIndicator = 1
    p.MessageExpiryInterval = 60
    p.ContentType = "application/json"
    p.ResponseTopic = "lf/v1/x/cmd"
    p.CorrelationData = b"\x01\x02"
    p.UserProperty = [("a", "1"), ("b", "2")]
    p.TopicAlias = 3
    return p.pack()


def _publish(props: bytes) -> bytes:
    topic = b"lf/v1/meter-0001/telemetry"
    return len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + props + b'{"energy_kwh":1}'


def _decoded(props: bytes) -> tuple[str, bytes, int, str]:
    pkt = packet.decode_publish(0x32, _publish(props), 5)
    assert pkt.properties is not None
    return pkt.topic.decode(), pkt.payload, pkt.mid, str(pkt.properties)


@pytest.fixture
def restore() -> Iterator[None]:
    yield
    paho_speedups.uninstall()


@pytest.mark.parametrize("with_props", [False, True])
def test_decoded_publish_is_identical_with_and_without_speedup(with_props: bool, restore: None) -> None:
    props = _props_bytes() if with_props else b"\x00"
    paho_speedups.uninstall()
    before = _decoded(props)
    assert paho_speedups.install()
    after = _decoded(props)
    assert after == before
    if with_props:
        assert "UserProperty" in after[3] and "CorrelationData" in after[3]


def test_properties_still_validate_and_clear(restore: None) -> None:
    assert paho_speedups.install()
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 10
    with pytest.raises(Exception, match="does not apply"):
        p.TopicAlias = 1  # a PUBLISH property on CONNECT
    p.clear()
    assert p.isEmpty()
    reread = Properties(PacketTypes.PUBLISH)
    reread.unpack(_props_bytes())
    reread.unpack(b"\x00")  # unpack clears what was there
    assert reread.isEmpty()


def test_unverified_paho_version_is_left_alone(monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    paho_speedups.uninstall()
    monkeypatch.setattr(paho_speedups, "VERIFIED_VERSIONS", ("0.0.0",))
    assert paho_speedups.install() is False
    assert Properties.__init__ is paho_speedups._original_init
