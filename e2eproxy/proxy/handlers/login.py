"""Login and logout: the client's own device becomes the crypto device; logout forgets it."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from e2eproxy.errors import E2EProxyError
from e2eproxy.proxy.app_keys import MEDIA, REGISTRY, UPSTREAM
from e2eproxy.proxy.handlers.common import forward_for_json, read_body, respond
from e2eproxy.proxy.outgoing import drain_outgoing
from e2eproxy.proxy.registry import token_of

log = logging.getLogger(__name__)

# The device keys should be on the server before the client's first message; but a slow upload
# must not make the login itself fail (the worker keeps trying).
KEY_UPLOAD_WAIT_S = 10.0


async def login(request: web.Request) -> web.StreamResponse:
    answer = await forward_for_json(request)
    data = answer.data
    if request.method == "POST" and answer.status == 200 and isinstance(data, dict):
        user_id, device_id, token = (data.get(k) for k in ("user_id", "device_id", "access_token"))
        if isinstance(user_id, str) and isinstance(device_id, str) and isinstance(token, str):
            new_device = not _names_a_device(await request.read())
            try:
                info = await request.app[REGISTRY].confirm_login(user_id, device_id, token,
                                                                  new_device=new_device)
                if info is not None and info.account is not None:
                    async with asyncio.timeout(KEY_UPLOAD_WAIT_S):
                        await drain_outgoing(request.app[UPSTREAM], info.account)
            except (E2EProxyError, TimeoutError) as exc:
                log.warning(
                    "Login of %s %s: crypto set-up not finished: %s", user_id, device_id, exc
                )
    return respond(answer)


def _names_a_device(body: bytes) -> bool:
    """Whether a login asked for a device ID of its own (that device may have keys already);
    without one, the server made a new device for this login."""
    try:
        data = json.loads(body)
    except ValueError:
        return True
    return not isinstance(data, dict) or "device_id" in data


async def _who(request: web.Request) -> tuple[str, str | None] | None:
    """(user, device) of the request's token, asked before the request may invalidate it."""
    registry = request.app[REGISTRY]
    token = token_of(request)
    if token is None:
        return None
    cached = registry.tokens.get(token)
    try:
        return (cached.user_id, cached.device_id) if cached else await registry.whoami(token)
    except E2EProxyError:
        return None


async def _forget(request: web.Request, user_id: str, devices: set[str] | None) -> None:
    """The server deleted these devices of `user_id` (None: all of them): their keys leave the
    store, their held uploads the spool."""
    registry = request.app[REGISTRY]
    for account in list(registry.accounts.values()):
        if account.user_id == user_id and (devices is None or account.device_id in devices):
            await request.app[MEDIA].of(account).drop_all()
            request.app[MEDIA].forget(account)
            await registry.remove(account)


async def logout(request: web.Request) -> web.StreamResponse:
    who = await _who(request)
    answer = await forward_for_json(request)
    if answer.status == 200 and who is not None:
        user_id, device_id = who
        everything = request.path.endswith("/all")
        await _forget(request, user_id, None if everything else {device_id or ""})
        token = token_of(request)
        if token is not None:
            request.app[REGISTRY].forget_token(token)
    return respond(answer)


async def delete_device(request: web.Request) -> web.StreamResponse:
    """DELETE /devices/{device}: a deleted device's keys go as on its logout (they stayed in
    the store, and the proxy kept acting for the device, before)."""
    who = await _who(request)
    answer = await forward_for_json(request)
    if answer.status == 200 and who is not None:
        await _forget(request, who[0], {request.match_info["device"]})
    return respond(answer)


async def delete_devices(request: web.Request) -> web.StreamResponse:
    """POST /delete_devices: the same for each device the body lists."""
    who = await _who(request)
    raw = await read_body(request)
    answer = await forward_for_json(request, body=raw)
    if answer.status == 200 and who is not None:
        try:
            listed = json.loads(raw).get("devices")
        except (ValueError, AttributeError):
            listed = None
        devices = {d for d in listed if isinstance(d, str)} if isinstance(listed, list) else set()
        await _forget(request, who[0], devices)
    return respond(answer)
