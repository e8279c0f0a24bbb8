"""Versions, registration, login, whoami, logout and devices."""

from __future__ import annotations

import secrets

from aiohttp import web

from .accounts import Session
from .common import client_routes, json_body, ok, session_of, stub_of
from .errors import MatrixError, bad_json_field, forbidden, not_found

SPEC_VERSIONS = [
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7",
    "v1.8", "v1.9", "v1.10", "v1.11",
]
LOGIN_FLOWS = [{"type": "m.login.password"}, {"type": "m.login.token"}]


async def versions(request: web.Request) -> web.Response:
    return ok({"versions": SPEC_VERSIONS, "unstable_features": {}})


def _login_response(request: web.Request, session: Session) -> web.Response:
    return ok({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": stub_of(request).server_name,
    })


async def login_flows(request: web.Request) -> web.Response:
    return ok({"flows": LOGIN_FLOWS})


async def login(request: web.Request) -> web.Response:
    stub = stub_of(request)
    body = await json_body(request)
    login_type = body.get("type")
    if login_type == "m.login.password":
        identifier = body.get("identifier") or {}
        if identifier and identifier.get("type", "m.id.user") != "m.id.user":
            raise MatrixError(400, "M_UNKNOWN", "Unknown login identifier type")
        name = identifier.get("user") or body.get("user")
        if not isinstance(name, str) or not isinstance(body.get("password"), str):
            raise bad_json_field("user and password are required")
        user = stub.accounts.check_password(name, body["password"])
    elif login_type == "m.login.token":
        user = stub.accounts.redeem_login_token(str(body.get("token", "")))
    else:
        raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {login_type}")
    session = stub.open_session(
        user.user_id, body.get("device_id"), body.get("initial_device_display_name")
    )
    return _login_response(request, session)


async def register(request: web.Request) -> web.Response:
    stub = stub_of(request)
    body = await json_body(request, allow_empty=True)
    if request.query.get("kind", "user") != "user":
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
    auth = body.get("auth") or {}
    if auth.get("type") != "m.login.dummy":
        return web.json_response(
            {"flows": [{"stages": ["m.login.dummy"]}], "params": {},
             "session": auth.get("session") or secrets.token_urlsafe(12)},
            status=401,
        )
    localpart = body.get("username") or secrets.token_hex(6)
    user_id = stub.register(localpart, str(body.get("password", "")))
    if body.get("inhibit_login"):
        return ok({"user_id": user_id, "home_server": stub.server_name})
    session = stub.open_session(
        user_id, body.get("device_id"), body.get("initial_device_display_name")
    )
    return _login_response(request, session)


async def whoami(request: web.Request) -> web.Response:
    session = session_of(request)
    return ok({"user_id": session.user_id, "device_id": session.device_id, "is_guest": False})


async def logout(request: web.Request) -> web.Response:
    session = session_of(request)
    stub_of(request).delete_device(session.user_id, session.device_id)
    return ok()


async def logout_all(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    for device_id in list(stub.accounts.user(session.user_id).devices):
        stub.delete_device(session.user_id, device_id)
    return ok()


def _device_json(device_id: str, display_name: str | None) -> dict[str, object]:
    return {"device_id": device_id, "display_name": display_name,
            "last_seen_ip": None, "last_seen_ts": None}


def _password_step(body: dict[str, object], password: str) -> web.Response | None:
    """The user-interactive auth step in front of deleting devices: None once `body` carries
    the right password; the 401 asking for one when it carries no password auth at all."""
    auth = body.get("auth") or {}
    if not isinstance(auth, dict) or auth.get("type") != "m.login.password":
        return web.json_response(
            {"flows": [{"stages": ["m.login.password"]}], "params": {},
             "session": secrets.token_urlsafe(12)},
            status=401,
        )
    if auth.get("password") != password:
        raise forbidden("Invalid password")
    return None


async def devices(request: web.Request) -> web.Response:
    session = session_of(request)
    user = stub_of(request).accounts.user(session.user_id)
    return ok({"devices": [_device_json(d.device_id, d.display_name)
                           for d in user.devices.values()]})


async def device(request: web.Request) -> web.Response:
    session = session_of(request)
    stub = stub_of(request)
    user = stub.accounts.user(session.user_id)
    device_id = request.match_info["device_id"]
    found = user.devices.get(device_id)
    if found is None:
        raise not_found("No device found")
    if request.method == "GET":
        return ok(_device_json(found.device_id, found.display_name))
    body = await json_body(request, allow_empty=True)
    if request.method == "PUT":
        if "display_name" in body:
            found.display_name = body["display_name"]
        return ok()
    challenge = _password_step(body, user.password)
    if challenge is not None:
        return challenge
    stub.delete_device(session.user_id, device_id)
    return ok()


async def delete_devices(request: web.Request) -> web.Response:
    """POST /delete_devices: several of the user's devices at once, behind the same password
    step as DELETE /devices/{deviceId}."""
    session = session_of(request)
    stub = stub_of(request)
    user = stub.accounts.user(session.user_id)
    body = await json_body(request)
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise bad_json_field("devices must be a list of device IDs")
    challenge = _password_step(body, user.password)
    if challenge is not None:
        return challenge
    for device_id in devices:
        stub.delete_device(session.user_id, device_id)
    return ok()


async def capabilities(request: web.Request) -> web.Response:
    session_of(request)
    return ok({"capabilities": {
        "m.change_password": {"enabled": False},
        "m.room_versions": {"default": "10", "available": {"10": "stable", "11": "stable"}},
    }})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_matrix/client/versions", versions),
        *client_routes([
            ("GET", "/login", login_flows),
            ("POST", "/login", login),
            ("POST", "/register", register),
            ("GET", "/account/whoami", whoami),
            ("POST", "/logout", logout),
            ("POST", "/logout/all", logout_all),
            ("GET", "/devices", devices),
            ("GET", "/devices/{device_id}", device),
            ("PUT", "/devices/{device_id}", device),
            ("DELETE", "/devices/{device_id}", device),
            ("POST", "/delete_devices", delete_devices),
            ("GET", "/capabilities", capabilities),
        ]),
    ]
