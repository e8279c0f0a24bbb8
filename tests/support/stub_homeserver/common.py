"""Helpers shared by the thin route handlers: the app key, auth, JSON bodies, routes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .accounts import Session
from .errors import MatrixError, bad_json, forbidden, invalid_param
from .server import StubHomeserver

JsonDict = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STUB_KEY = web.AppKey("stub_homeserver", StubHomeserver)
CLIENT_PREFIXES = ("/_matrix/client/r0", "/_matrix/client/v3")


def stub_of(request: web.Request) -> StubHomeserver:
    return request.app[STUB_KEY]


# Set by the app's middleware: the access_token of a form-encoded POST body.
FORM_TOKEN = web.RequestKey("form_access_token", str)


def access_token_of(request: web.Request) -> str | None:
    """As Synapse reads it: the Authorization header, or else the `access_token` request arg,
    which (Twisted) a form-encoded POST body sets too, over the query's; both at once are
    refused."""
    argument = request.get(FORM_TOKEN) or request.query.get("access_token")
    header = request.headers.get("Authorization")
    if header is not None:
        if argument is not None:
            raise MatrixError(
                401, "M_MISSING_TOKEN",
                "Mixing Authorization headers and access_token query parameters.",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MatrixError(401, "M_MISSING_TOKEN", "Invalid Authorization header.")
        return token.strip()
    return argument


def session_of(request: web.Request) -> Session:
    """The authenticated session, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    return stub_of(request).accounts.session(access_token_of(request))


def require_self(session: Session, user_id: str) -> None:
    if session.user_id != user_id:
        raise forbidden("Cannot act on behalf of another user")


async def json_body(request: web.Request, allow_empty: bool = False) -> JsonDict:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_json() from None
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "Content must be a JSON object.")
    return body


def int_param(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid_param(f"{name} must be an integer") from None


def ok(body: Any = None, status: int = 200) -> web.Response:
    return web.json_response({} if body is None else body, status=status)


def client_routes(
    routes: Iterable[tuple[str, str, Handler]], prefixes: Iterable[str] = CLIENT_PREFIXES
) -> list[web.RouteDef]:
    """Register each ``(method, path, handler)`` under every client API prefix."""
    table = list(routes)
    return [
        web.route(method, prefix + path, handler)
        for prefix in prefixes
        for method, path, handler in table
    ]
