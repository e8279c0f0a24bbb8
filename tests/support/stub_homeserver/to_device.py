"""PUT /sendToDevice/{type}/{txn}."""

from __future__ import annotations

from aiohttp import web

from .common import client_routes, json_body, ok, session_of, stub_of
from .errors import bad_json_field


async def send_to_device(request: web.Request) -> web.Response:
    session = session_of(request)
    body = await json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, dict):
        raise bad_json_field("messages must be an object")
    stub_of(request).send_to_device(
        session.user_id, session.device_id, request.match_info["txn_id"],
        request.match_info["event_type"], messages,
    )
    return ok()


def routes() -> list[web.RouteDef]:
    return client_routes([("PUT", "/sendToDevice/{event_type}/{txn_id}", send_to_device)])
