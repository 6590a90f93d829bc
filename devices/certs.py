"""A private CA and the broker's TLS server certificate (``lianfang certs init``).

Government intranets rarely have a public CA in reach, so Lianfang makes its own: a CA certificate that
installers load into devices (``ca.crt``) and a server certificate for Mosquitto's TLS listener signed by it.
Private keys are written with mode 0600 and never overwritten unless asked.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import UserError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CertPaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "broker.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "broker.key"

    def all(self) -> list[Path]:
        return [self.ca_cert, self.ca_key, self.server_cert, self.server_key]


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise UserError(f"key type {key_type!r} is not one of rsa, ec")


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    *, now: datetime, organization: str = "Lianfang", days: int = 3650, key_type: str = "rsa"
) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key(key_type)
    name = _name(f"{organization} device CA", organization)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hosts: list[str],
    *,
    now: datetime,
    days: int = 825,
    key_type: str = "rsa",
) -> tuple[x509.Certificate, PrivateKey]:
    """A TLS server certificate for the broker; ``hosts`` (DNS names and IP addresses) go into the SAN."""
    if not hosts:
        raise UserError("the broker certificate needs at least one host name or IP address (--host)")
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = _new_key(key_type)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0], str(org)))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_certs(
    directory: Path,
    hosts: list[str],
    *,
    now: datetime,
    organization: str = "Lianfang",
    force: bool = False,
    key_type: str = "rsa",
) -> CertPaths:
    """Create the CA and the broker certificate in ``directory``. With an existing CA (and no ``force``) only
    a missing broker certificate is (re)issued from it; existing files are never silently replaced."""
    paths = CertPaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if force:
        for p in paths.all():
            p.unlink(missing_ok=True)
    if paths.server_cert.exists() and not force:
        raise UserError(f"{paths.server_cert} already exists: use --force to replace the CA and certificate")
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise UserError(f"{paths.ca_key}: unsupported key type")
        ca_key: PrivateKey = loaded
    else:
        ca_cert, ca_key = make_ca(now=now, organization=organization, key_type=key_type)
        _write(paths.ca_key, _key_pem(ca_key), 0o600)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    cert, key = make_server_cert(ca_cert, ca_key, hosts, now=now, key_type=key_type)
    _write(paths.server_key, _key_pem(key), 0o600)
    _write(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths
