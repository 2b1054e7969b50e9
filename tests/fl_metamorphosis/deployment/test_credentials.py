"""Certificates, keys and the Fleet gateway, without starting Flower: strict TLS verification, files that
are never silently replaced, private folders whatever the umask, the CA key away from the server, and a
gateway that forwards the Fleet API and nothing else."""

import os
import socket
import ssl
import threading

import httpx
import pytest
from cryptography import x509
from starlette.testclient import TestClient

from fl_metamorphosis.config import ConfigError
from fl_metamorphosis.deployment import launch as deploy
from fl_metamorphosis.deployment.credentials import CredentialsExist, make_certificates, make_device_key
from fl_metamorphosis.deployment.fleet_gateway import FLEET_ROUTES, MAX_BODY_BYTES, gateway_app


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def _strict_handshake(files) -> str:
    """A TLS handshake to a server with these files, verified as Python 3.13 does by default (strict X.509)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    raw = socket.create_connection(("127.0.0.1", port))
    with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        version = tls.version()
        tls.send(b"x")
    thread.join(5)
    listener.close()
    return version


def test_certificates_pass_a_strict_verification_handshake_with_key_identifiers(tmp_path):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    for path in (files.ca_cert, files.server_cert):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert _strict_handshake(files).startswith("TLS")


def test_the_ca_key_stays_out_of_the_servers_folder_and_the_server_refuses_one_there(tmp_path):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    assert files.ca_key.parent == tmp_path / "certs-ca"
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "server.key", "server.pem"]
    (tmp_path / "certs" / "ca.key").write_bytes(files.ca_key.read_bytes())
    with pytest.raises(ConfigError, match="ca.key is in the folder the server reads"):
        deploy.server_command(tmp_path / "certs", 9093, tmp_path / "state")


def test_nothing_is_replaced_without_force_and_a_new_server_certificate_keeps_the_ca(tmp_path):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    with pytest.raises(CredentialsExist, match="--force"):
        make_certificates(tmp_path / "certs", ["127.0.0.1"])
    assert files.server_cert.read_bytes() == server
    again = make_certificates(tmp_path / "certs", ["127.0.0.1", "10.0.0.5"], force=True)
    assert again.ca_cert.read_bytes() == ca and again.server_cert.read_bytes() != server  # devices keep trusting
    assert _strict_handshake(again).startswith("TLS")
    private, public = make_device_key(tmp_path / "keys", "pi")
    registered = public.read_bytes()
    with pytest.raises(CredentialsExist, match="--force"):
        make_device_key(tmp_path / "keys", "pi")
    assert public.read_bytes() == registered
    make_device_key(tmp_path / "keys", "pi", force=True)
    assert public.read_bytes() != registered


def test_key_folders_are_0700_and_private_keys_0600_under_umask_000(tmp_path, umask_000):
    files = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    private, public = make_device_key(tmp_path / "keys", "pi")
    for folder in (tmp_path / "certs", tmp_path / "certs-ca", tmp_path / "keys"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for path in (files.ca_key, files.server_key, private):
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (files.ca_cert, files.server_cert, public):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_insecure_binds_loopback_only_and_conflicts_with_certs(tmp_path):
    with pytest.raises(ConfigError, match="conflict"):
        deploy.check_server_addresses(tmp_path, "127.0.0.1", insecure=True)
    with pytest.raises(ConfigError, match="loopback only"):
        deploy.check_server_addresses(None, "0.0.0.0", insecure=True)
    with pytest.raises(ConfigError, match="give --certs"):
        deploy.check_server_addresses(None, "0.0.0.0", insecure=False)
    deploy.check_server_addresses(None, "127.0.0.1", insecure=True)
    plain = deploy.server_command(None, 8000, tmp_path)
    assert plain[plain.index("--host") :][:4] == ["--host", "127.0.0.1", "--port", "8000"]
    make_certificates(tmp_path / "certs", ["192.0.2.7"])
    secure = deploy.server_command(tmp_path / "certs", 9093, tmp_path)  # behind the gateway: loopback too
    assert secure[secure.index("--host") :][:4] == ["--host", "127.0.0.1", "--port", "9093"]
    assert "--enable-supernode-auth" in secure


@pytest.fixture
def gateway():
    seen: list[httpx.Request] = []

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"reply:" + request.content, headers={"x-flower": "1"})

    app = gateway_app("https://127.0.0.1:9093", None, transport=httpx.MockTransport(superlink))
    with TestClient(app, base_url="https://gateway") as client:
        yield client, seen


def test_the_gateway_forwards_fleet_routes_with_their_signed_headers_unchanged(gateway):
    client, seen = gateway
    signed = {"x-flower-public-key": "cHVi", "x-flower-signature": "c2ln", "x-flower-timestamp": "2026-12-03"}
    for route in sorted(FLEET_ROUTES):
        reply = client.post(route, content=b"\x08\x01", headers=signed)
        assert reply.status_code == 200 and reply.content == b"reply:\x08\x01"
    assert [r.url.path for r in seen] == sorted(FLEET_ROUTES)
    assert all(r.headers[k] == v for r in seen for k, v in signed.items())
    assert all(r.url.host == "127.0.0.1" and r.url.port == 9093 for r in seen)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/list-nodes"),
        ("POST", "/v1/runtime/get-nodes"),
        ("POST", "/v1/fleet/../control/list-nodes"),
        ("POST", "/v1/fleet/%2e%2e/control/list-nodes"),
        ("POST", "/v1/fleet/pull-messages/../../control/list-runs"),
        ("POST", "/v1/fleet/pull-messages?x=/v1/control/list-runs"),
        ("POST", "//v1/fleet/pull-messages"),
        ("GET", "/v1/fleet/pull-messages"),
        ("PUT", "/v1/fleet/push-messages"),
        ("GET", "/"),
    ],
)
def test_the_gateway_answers_everything_else_404_without_reaching_the_superlink(gateway, method, path):
    client, seen = gateway
    reply = client.request(method, path, content=b"x")
    if path.endswith("?x=/v1/control/list-runs"):  # a query string on a Fleet route: forwarded without it
        assert reply.status_code == 200 and [r.url.path for r in seen] == ["/v1/fleet/pull-messages"]
        assert seen[0].url.query == b""
        return
    assert reply.status_code == 404 and seen == []


def test_the_gateway_refuses_a_body_above_its_cap(gateway):
    client, seen = gateway
    reply = client.post("/v1/fleet/push-object", headers={"content-length": str(MAX_BODY_BYTES + 1)}, content=b"")
    assert reply.status_code in (400, 413) and seen == []


def test_the_gateway_stops_reading_a_chunked_body_at_its_cap(gateway, monkeypatch):
    import fl_metamorphosis.deployment.fleet_gateway as fleet_gateway

    monkeypatch.setattr(fleet_gateway, "MAX_BODY_BYTES", 1000)
    client, seen = gateway
    reply = client.post("/v1/fleet/push-object", content=(b"x" * 600 for _ in range(3)))  # no content-length
    assert reply.status_code == 413 and seen == []
