"""TLS certificates for the SuperLink and authentication keys for devices, with ``cryptography``.

The SuperLink serves one HTTPS port. Its certificate must name every address the devices and the
operator use (a LAN IP, a DNS name) AND 127.0.0.1: the SuperLink's own SuperExec connects back to it on
loopback when it is bound to 0.0.0.0 (Flower 1.42, ``resolve_bind_address``). Devices trust the CA
certificate only (``--root-certificates``); there is no client certificate: a device proves who it is
with its own P-384 key in OpenSSH format, registered on the SuperLink (``flwr supernode register``).

A device generates its key pair ON the device: the private key never leaves it, only ``KEY.pub`` does.
Private keys are written 0600 and never printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest validity clients such as browsers still accept for a server certificate


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path  # give this one to every device and operator
    ca_key: Path  # keep offline: it can sign certificates every device would trust
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 before any byte is written (no window where others can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "127.0.0.1", "localhost"]):  # loopback always: see the docstring
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_certificates(out: Path, hosts: list[str], *, days: int = VALID_DAYS) -> CertificateFiles:
    """A CA and a SuperLink certificate signed by it, valid for ``hosts`` (IPs or DNS names) and loopback."""
    out = Path(out)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-metamorphosis CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertificateFiles(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    out.mkdir(parents=True, exist_ok=True)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    for path, key in ((files.ca_key, ca_key), (files.server_key, server_key)):
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    return files


def certificate_names(cert: Path) -> list[str]:
    """The addresses a certificate is valid for (its subject alternative names)."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    sans = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)


def make_device_key(out: Path, name: str = "device") -> tuple[Path, Path]:
    """A P-384 key pair in OpenSSH format (what SuperNode authentication expects): ``out/name`` (0600) and
    ``out/name.pub``, the one file to hand to the operator for ``deploy register``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(out) / name
    public = Path(out) / f"{name}.pub"
    openssh = serialization.PrivateFormat.OpenSSH
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, openssh, serialization.NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public
