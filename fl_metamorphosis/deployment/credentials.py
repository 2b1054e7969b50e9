"""TLS certificates for the SuperLink and authentication keys for devices, with ``cryptography``.

The SuperLink serves one HTTPS port. Its certificate must name every address the devices and the
operator use (a LAN IP, a DNS name) AND 127.0.0.1: the SuperLink's own SuperExec connects back to it on
loopback when it is bound to 0.0.0.0 (Flower 1.42, ``resolve_bind_address``). Devices trust the CA
certificate only (``--root-certificates``); there is no client certificate: a device proves who it is
with its own P-384 key in OpenSSH format, registered on the SuperLink (``flwr supernode register``).

A device generates its key pair ON the device: the private key never leaves it, only ``KEY.pub`` does.
Private keys are written 0600 in folders created 0700, whatever the umask, and never printed. The CA's
private key lives in its own folder (``OUT-ca``), not in the one the server reads: a server compromise
must not hand over the key that every device trusts. Nothing existing is replaced without ``--force``.
Certificates carry the Subject and Authority Key Identifier extensions, which strict verifiers (Python
3.13's default ``VERIFY_X509_STRICT``) require.
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

from ..config import ConfigError

VALID_DAYS = 825  # the longest validity clients such as browsers still accept for a server certificate


class CredentialsExist(ConfigError):
    """A key or certificate is already there: replacing it silently would lock out registered devices."""


@dataclass(frozen=True)
class CertificateFiles:
    ca_cert: Path  # give this one to every device and operator (a copy sits beside the server's files)
    ca_key: Path  # keep offline: it can sign certificates every device would trust
    server_cert: Path
    server_key: Path


def _private_folder(folder: Path) -> None:
    """Create ``folder`` 0700 whatever the umask (a folder others can write lets them swap a key)."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        os.chmod(folder, 0o700)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` before any byte is written (no window where others can read it)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _refuse_existing(paths: list[Path], what: str, flag: str) -> None:
    there = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if there:
        raise CredentialsExist(
            f"{what}: {', '.join(there)} already exist(s); replacing them would lock out whoever trusts or "
            f"registered them. Give {flag} to replace them, or another --out"
        )


def _subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "127.0.0.1", "localhost"]):  # loopback always: see the docstring
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _new_ca(now: dt.datetime, days: int) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-metamorphosis CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def default_ca_dir(out: Path) -> Path:
    """Where ``deploy certs --out OUT`` keeps the CA: beside OUT, never in the folder the server reads."""
    out = Path(out)
    return out.parent / f"{out.name}-ca"


def make_certificates(
    out: Path, hosts: list[str], *, ca_dir: Path | None = None, force: bool = False, days: int = VALID_DAYS
) -> CertificateFiles:
    """A SuperLink certificate valid for ``hosts`` (IPs or DNS names) and loopback, signed by the CA in
    ``ca_dir`` (default ``OUT-ca``, created there if absent; an existing CA is reused, so devices keep
    trusting it). ``out`` gets what the server reads: ``server.pem``, ``server.key`` and a copy of
    ``ca.crt``; the CA's private key never goes there. Existing server files are replaced only with
    ``force``; an existing CA is never replaced (delete its folder to start a new trust root)."""
    out, ca_dir = Path(out), Path(ca_dir) if ca_dir is not None else default_ca_dir(out)
    if out.resolve() == ca_dir.resolve():
        raise ConfigError(f"deploy certs: the CA folder {ca_dir} must not be the server's folder {out}")
    files = CertificateFiles(out / "ca.crt", ca_dir / "ca.key", out / "server.pem", out / "server.key")
    if not force:
        _refuse_existing([files.server_cert, files.server_key], "deploy certs", "--force")
    now = dt.datetime.now(dt.UTC)
    _private_folder(ca_dir)
    if files.ca_key.exists():
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    else:
        ca_key, ca_cert = _new_ca(now, days)
        _write(files.ca_key, _pem_private(ca_key), 0o600)
        _write(ca_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _private_folder(out)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_key, _pem_private(server_key), 0o600)
    return files


def certificate_names(cert: Path) -> list[str]:
    """The addresses a certificate is valid for (its subject alternative names)."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    sans = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)


def make_device_key(out: Path, name: str = "device", *, force: bool = False) -> tuple[Path, Path]:
    """A P-384 key pair in OpenSSH format (what SuperNode authentication expects): ``out/name`` (0600) and
    ``out/name.pub``, the one file to hand to the operator for ``deploy register``. An existing pair is
    replaced only with ``force``: its public key may be registered already."""
    private, public = Path(out) / name, Path(out) / f"{name}.pub"
    if not force:
        _refuse_existing([private, public], "deploy device-key", "--force")
    _private_folder(Path(out))
    key = ec.generate_private_key(ec.SECP384R1())
    openssh = serialization.PrivateFormat.OpenSSH
    _write(private, key.private_bytes(serialization.Encoding.PEM, openssh, serialization.NoEncryption()), 0o600)
    openssh_public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(public, openssh_public + b"\n", 0o644)
    return private, public
