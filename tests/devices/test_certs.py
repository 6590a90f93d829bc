"""`certs init`: the CA and the broker certificate, and a device connecting over TLS to a real Mosquitto."""

from __future__ import annotations

import ssl
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from paho.mqtt.enums import CallbackAPIVersion

from core.errors import UserError
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.certs import init_certs
from devices.dynsec import DynsecClient
from devices.provisioning import Provisioner
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.helpers import wait_until

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_certs_init_makes_a_ca_signed_server_certificate(tmp_path: Path) -> None:
    paths = init_certs(tmp_path / "certs", ["broker.example.gov.cn", "127.0.0.1"], now=NOW)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject
    pub = ca.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    assert server.signature_hash_algorithm is not None
    pub.verify(server.signature, server.tbs_certificate_bytes, padding.PKCS1v15(), server.signature_hash_algorithm)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.gov.cn"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert server.not_valid_after_utc > NOW + timedelta(days=365)
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_certs_init_never_overwrites_without_force(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    first = init_certs(d, ["localhost"], now=NOW, key_type="ec")
    ca_before = first.ca_cert.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        init_certs(d, ["localhost"], now=NOW)
    first.server_cert.unlink()
    again = init_certs(d, ["localhost", "10.1.2.3"], now=NOW)  # reissued from the same CA
    assert again.ca_cert.read_bytes() == ca_before
    forced = init_certs(d, ["localhost"], now=NOW, force=True)
    assert forced.ca_cert.read_bytes() != ca_before
    with pytest.raises(UserError, match="at least one host"):
        init_certs(tmp_path / "other", [], now=NOW)


@pytest.mark.integration
def test_device_connects_over_tls_with_its_credentials(tmp_path: Path, sqlite_registry: Registry) -> None:
    paths = init_certs(tmp_path / "certs", ["localhost", "127.0.0.1"], now=datetime.now(UTC))
    cfg = BrokerConfig(
        directory=tmp_path / "mosquitto",
        port=free_port(),
        admin_password="adm-" + uuid.uuid4().hex,
        platform_password="plat-" + uuid.uuid4().hex,
        tls_port=free_port(),
        tls_certfile=paths.server_cert,
        tls_keyfile=paths.server_key,
        tls_cafile=paths.ca_cert,
    )
    sqlite_registry.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    sqlite_registry.add_devices([DeviceSpec("gate-tls1", "gate", "gd")], now=NOW)
    with MosquittoProcess(cfg):
        with DynsecClient("127.0.0.1", cfg.tls_port or 0, cfg.admin_password, tls_ca=paths.ca_cert) as admin:
            secret = Provisioner(sqlite_registry, admin, actor=Actor("t", "test")).provision_new(["gate-tls1"], NOW)
        results: list[int] = []
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-tls1", protocol=mqtt.MQTTv5)
        dev.username_pw_set("gate-tls1", secret["gate-tls1"])
        dev.tls_set(ca_certs=str(paths.ca_cert), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        dev.on_connect = lambda _c, _u, _f, rc, _p: results.append(rc.value)
        dev.connect("localhost", cfg.tls_port or 0)
        dev.loop_start()
        try:
            wait_until(lambda: results, 5, what="TLS CONNACK")
            assert results == [0]
            info = dev.publish("lf/v1/gate-tls1/telemetry", b"{}", qos=1)
            info.wait_for_publish(5)
            assert info.is_published()
        finally:
            dev.disconnect()
            dev.loop_stop()
        # A client that does not trust our CA is refused at the TLS handshake.
        stranger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-tls1", protocol=mqtt.MQTTv5)
        stranger.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)  # system CAs only
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.connect("localhost", cfg.tls_port or 0)
