"""/keys/* endpoints: upload, query, claim, changes, cross-signing uploads."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .common import client_routes, json_body, ok, session_of, stub_of
from .errors import MatrixError, bad_json_field, missing_param
from .filters import SyncFilter
from .stream import parse_token
from .syncbuilder import SyncBuilder, SyncRequest


async def upload(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    counts = stub_of(request).upload_keys(session.user_id, session.device_id, body)
    return ok({"one_time_key_counts": counts})


async def query(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    wanted = body.get("device_keys")
    if not isinstance(wanted, dict):
        raise bad_json_field("device_keys must be an object")
    return ok(stub_of(request).keys.query(session.user_id, wanted))


async def claim(request: web.Request) -> web.Response:
    session_of(request)
    body = await json_body(request)
    wanted = body.get("one_time_keys")
    if not isinstance(wanted, dict):
        raise bad_json_field("one_time_keys must be an object")
    return ok(stub_of(request).keys.claim(wanted))


async def changes(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    if "from" not in request.query:
        raise missing_param("Missing from")
    after = parse_token(request.query["from"], "from")
    upto = parse_token(request.query.get("to", stub.stream.token()), "to")
    builder = SyncBuilder(stub, SyncRequest(session.user_id, session.device_id, after,
                                            SyncFilter()))
    builder.upto = min(upto, stub.stream.position)
    changed, left = builder.device_lists()
    return ok({"changed": sorted(changed), "left": sorted(left)})


async def device_signing_upload(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    stub = stub_of(request)
    if stub.keys.cross_signing.get(session.user_id):
        # As Synapse: the first upload needs no auth (MSC3967), replacing keys needs the
        # user's password (user-interactive auth).
        _password_auth(stub, session.user_id, body.get("auth"))
    stub.keys.upload_cross_signing(session.user_id, body)
    stub.keys.mark_changed(session.user_id)
    stub.stream.notify()
    return ok()


async def signatures_upload(request: web.Request) -> web.Response:
    session_of(request)
    body = await json_body(request)
    stub = stub_of(request)
    result = stub.keys.upload_signatures(body)
    for user_id in body:
        stub.keys.mark_changed(user_id)
    stub.stream.notify()
    return ok(result)


UIA_SESSION = "stub-uia-session"


def _password_auth(stub: Any, user_id: str, auth: Any) -> None:
    if not isinstance(auth, dict) or auth.get("type") != "m.login.password":
        raise MatrixError(401, "M_FORBIDDEN", "Authentication required",
                          flows=[{"stages": ["m.login.password"]}], params={},
                          session=UIA_SESSION)
    identifier = auth.get("identifier")
    user = identifier.get("user") if isinstance(identifier, dict) else None
    password = auth.get("password")
    if user != user_id or not isinstance(password, str):
        raise MatrixError(401, "M_FORBIDDEN", "Invalid auth", flows=[
            {"stages": ["m.login.password"]}], params={}, session=UIA_SESSION)
    stub.accounts.check_password(user_id, password)


def routes() -> list[web.RouteDef]:
    return client_routes([
        ("POST", "/keys/upload", upload),
        ("POST", "/keys/query", query),
        ("POST", "/keys/claim", claim),
        ("GET", "/keys/changes", changes),
        ("POST", "/keys/device_signing/upload", device_signing_upload),
        ("POST", "/keys/signatures/upload", signatures_upload),
    ])
