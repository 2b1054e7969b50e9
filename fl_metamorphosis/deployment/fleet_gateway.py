"""The Fleet gateway: the one port devices reach. It forwards Flower's Fleet API and nothing else.

Why it exists: Flower 1.42's SuperLink serves the Fleet API (devices), the Control API (the operator's
``flwr`` CLI) and the Runtime API (its own ServerApp) on ONE HTTPS port. The open-source Control API
authenticates no one (``NoOpControlAuthnPlugin``; OIDC is not in this distribution). So whoever reaches
that port can register a device key, list and unregister devices, start a run of any app (its server code
runs on the server, its device code on every device) and stop runs.

So ``deploy server`` binds the SuperLink to 127.0.0.1 only, and this gateway listens on the address the
devices use. It terminates TLS with the SuperLink's certificate and forwards exactly the Fleet routes
below (POST, fixed paths; the path forwarded is the allow-listed string, never the caller's raw one) to
the SuperLink over TLS on loopback. Any other method or path is answered 404 here and never reaches the
SuperLink. Devices still prove who they are to the SuperLink itself (SuperNode authentication: signed
headers, forwarded unchanged).

A reverse proxy such as nginx does the same job (docs/deploy.md gives its configuration). This one is
built in so that ``deploy server`` is one command on any machine with the project installed: it uses
uvicorn, starlette and httpx, which Flower itself runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

# Flower 1.42's Fleet service (flwr/superlink/routers/fleet/router.py): what a SuperNode calls.
FLEET_ROUTES = frozenset(
    f"/v1/fleet/{name}"
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
MAX_BODY_BYTES = 512 * 2**20  # above the largest message of this app (a features reply), far below memory
# RFC 9110 hop-by-hop fields, and the ones httpx recomputes for the forwarded request
_DROPPED_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
    | {"content-length", "proxy-authenticate", "proxy-authorization"}
)

log = logging.getLogger("fleet-gateway")


def _forwarded_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS}


def gateway_app(
    upstream: str,
    ca_cert: Path | None,
    *,
    timeout_s: float = 60.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The ASGI app: Fleet routes forwarded to ``upstream`` (``https://127.0.0.1:PORT``), all else 404.

    Args:
        upstream: the SuperLink's base URL on loopback.
        ca_cert: verifies the SuperLink's certificate; ``None`` only with an ``http://`` upstream.
        timeout_s: how long one forwarded request may take.
        transport: an httpx transport in place of the network (tests).
    """
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=timeout_s, transport=transport)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method != "POST" or path not in FLEET_ROUTES:
            host = request.client.host if request.client else "?"
            log.warning("refused %s %s from %s: not a Fleet API route", request.method, path[:200], host)
            return PlainTextResponse("not found: this port serves the Fleet API only\n", status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return PlainTextResponse("request too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no length: stop reading at the cap
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse("request too large\n", status_code=413)
        try:
            reply = await client.post(path, content=bytes(body), headers=_forwarded_headers(request.headers))
        except httpx.HTTPError as err:
            log.error("the SuperLink on %s did not answer %s: %s", upstream, path, err)
            return PlainTextResponse("the SuperLink is unavailable\n", status_code=502)
        # httpx has decoded any content-encoding: the body goes out as it is, without those fields
        headers = {k: v for k, v in _forwarded_headers(reply.headers).items() if k.lower() != "content-encoding"}
        return Response(reply.content, status_code=reply.status_code, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(host: str, port: int, upstream_port: int, certs: Path) -> None:
    """Listen on ``host:port`` with TLS (the certificates of ``deploy certs``), forward to the loopback SuperLink."""
    certs = Path(certs)
    app = gateway_app(f"https://127.0.0.1:{upstream_port}", certs / "ca.crt")
    log.info("Fleet gateway on https://%s:%d -> SuperLink https://127.0.0.1:%d", host, port, upstream_port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certs / "server.pem"),
        ssl_keyfile=str(certs / "server.key"),
        log_config=None,  # keep main()'s logging: uvicorn's own config would drop the refusal lines' handler
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="the address devices connect to")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True, help="the SuperLink's port on 127.0.0.1")
    parser.add_argument("--certs", type=Path, required=True, help="the folder of `deploy certs`")
    args = parser.parse_args(argv)
    # force: the package adds a NullHandler to the root logger on import (_third_party.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)
    serve(args.host, args.port, args.upstream_port, args.certs)


if __name__ == "__main__":
    main()
