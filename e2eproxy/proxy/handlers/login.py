"""Login and logout: the client's own device becomes the crypto device; logout forgets it."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from e2eproxy.errors import E2EProxyError
from e2eproxy.proxy.accounts import token_of
from e2eproxy.proxy.engine_io import drain_outgoing
from e2eproxy.proxy.handlers.common import forward_for_json, respond
from e2eproxy.proxy.keys import MEDIA, REGISTRY, UPSTREAM

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
            try:
                info = await request.app[REGISTRY].confirm_login(user_id, device_id, token)
                if info is not None and info.account is not None:
                    async with asyncio.timeout(KEY_UPLOAD_WAIT_S):
                        await drain_outgoing(request.app[UPSTREAM], info.account)
            except (E2EProxyError, TimeoutError) as exc:
                log.warning(
                    "Login of %s %s: crypto set-up not finished: %s", user_id, device_id, exc
                )
    return respond(answer)


async def logout(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY]
    token = token_of(request)
    who: tuple[str, str | None] | None = None
    if token is not None:
        cached = registry.tokens.get(token)
        try:
            who = (cached.user_id, cached.device_id) if cached else await registry.whoami(token)
        except E2EProxyError:
            who = None
    answer = await forward_for_json(request)
    if answer.status == 200 and who is not None:
        user_id, device_id = who
        everything = request.path.endswith("/all")
        for account in list(registry.accounts.values()):
            if account.user_id == user_id and (everything or account.device_id == device_id):
                await request.app[MEDIA].of(account).drop_all()
                request.app[MEDIA].forget(account)
                await registry.remove(account)
        if token is not None:
            registry.forget_token(token)
    return respond(answer)
