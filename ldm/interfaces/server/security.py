"""What every request passes before a route sees it (an ASGI middleware): the Host header, HTTP basic auth, a JSON
content type on bodies, and the body's declared size. Each refusal is a JSON answer naming the problem.

Binding 127.0.0.1 is not enough on its own: a web page whose own name an attacker re-points at 127.0.0.1 (DNS
rebinding) reaches the server from the user's browser with that name in the Host header; so a server listening on
loopback answers only to local host names. A server listening elsewhere needs --api-auth (or --insecure), and then
answers to the host names --allowed-hosts gives (any, if none).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port ("[::1]:7860" -> "::1")."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def send_json(send: Callable, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


class Guard:
    """The ASGI middleware. allowed_hosts None: any host name; auth: "user:password" or None."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None, auth: str | None, max_body_bytes: int):
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.auth = auth
        self.max_body_bytes = max_body_bytes

    def refusal(self, scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """(status, error, detail, headers) of a request to refuse, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = host_name(headers.get("host", "")).lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return 400, "bad host", f"this server does not answer to the host name {host[:80]!r}", []
        if self.auth is not None and not self.authorised(headers.get("authorization", "")):
            return (
                401,
                "unauthorized",
                "this server needs HTTP basic auth",
                [(b"www-authenticate", b'Basic realm="ldm"')],
            )
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                return 413, "body too large", f"a request body is at most {self.max_body_bytes:,} bytes", []
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, "unsupported media type", "send the body as JSON (Content-Type: application/json)", []
        return None

    def authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.auth.encode())

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            status, error, detail, headers = refused
            await send_json(send, status, {"error": error, "detail": detail}, headers)
            return
        await self.app(scope, receive, send)
