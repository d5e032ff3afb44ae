"""The local certificate authority: a CA, the servers' certificate, devices' certificates.

``webscada stack up`` calls :func:`ensure_server_files`: under ``<stack_dir>/tls/``
a CA (``ca.pem``, key ``ca.key``) and a server certificate for the loopback
names (``server.pem``/``server.key``) that Mosquitto's TLS listeners and, when
asked, the API present. Keys are EC P-256, written mode 0600. Existing files are
kept (a server certificate is renewed when it has less than 30 days left).

:func:`issue_device_certificate` (``webscada device cert ID``) signs a client
certificate whose common name is the device id: Mosquitto's mutual-TLS listener
takes that name as the MQTT user name, so the device gets the ACLs of its account.

This CA is for a site's own devices and tools; a deployment facing the internet
would put its public certificate in front (a reverse proxy) and may keep this CA
for devices.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_server_files", "issue_device_certificate", "tls_files"]

_CA_DAYS = 3650
_SERVER_DAYS = 825
_DEVICE_DAYS = 825
_RENEW_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"


def tls_files(stack_dir: Path) -> TlsFiles:
    return TlsFiles(stack_dir / "tls")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    fresh.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WebSCADA Stream"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ensure_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if files.ca.exists() and files.ca_key.exists():
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(files.ca.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("WebSCADA Stream local CA")
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(files.ca_key, _key_pem(key), 0o600)
    _write(files.ca, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, days: int,
          usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _server_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def ensure_server_files(stack_dir: Path, hosts: list[str]) -> TlsFiles:
    """The CA and a server certificate for ``hosts`` (plus localhost/127.0.0.1)."""
    files = tls_files(stack_dir)
    ca, ca_key = _ensure_ca(files)
    if files.server.exists() and files.server_key.exists():
        current = x509.load_pem_x509_certificate(files.server.read_bytes())
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        wanted = _server_names(hosts)
        if (current.not_valid_after_utc - _now() > dt.timedelta(days=_RENEW_DAYS)
                and all(name in names for name in wanted)):
            return files
    cert, key = _leaf(ca, ca_key, "WebSCADA Stream server", _SERVER_DAYS,
                      ExtendedKeyUsageOID.SERVER_AUTH, _server_names(hosts))
    _write(files.server_key, key, 0o600)
    _write(files.server, cert, 0o644)
    return files


def issue_device_certificate(stack_dir: Path, device_id: str) -> tuple[bytes, bytes]:
    """A client certificate (PEM) and its key (PEM) with common name ``device_id``."""
    files = tls_files(stack_dir)
    if not (files.ca.exists() and files.ca_key.exists()):
        raise FileNotFoundError(f"no CA under {files.folder}: `webscada stack up` makes it")
    ca, ca_key = _ensure_ca(files)
    return _leaf(ca, ca_key, device_id, _DEVICE_DAYS, ExtendedKeyUsageOID.CLIENT_AUTH, [])
