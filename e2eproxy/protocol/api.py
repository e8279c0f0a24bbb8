"""Request builders: every HTTP request the engine needs is data, an ``OutgoingRequest``.

The engine never talks to the network. It hands these out through ``OlmMachine.outgoing_requests()``
and the I/O shell sends them, then reports back with ``mark_request_as_sent`` /
``mark_request_as_failed``. Bodies are plain JSON-compatible dicts.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

CLIENT_V3 = "/_matrix/client/v3"
KEY_CLAIM_TIMEOUT_MS = 10_000


class RequestKind(enum.Enum):
    """What an outgoing request is for; the engine routes the response by it."""

    KEYS_UPLOAD = "keys_upload"
    KEYS_QUERY = "keys_query"
    KEYS_CLAIM = "keys_claim"
    TO_DEVICE = "to_device"
    SIGNATURES_UPLOAD = "signatures_upload"
    # An event into a room (in-room verification): the shell sends it as the client's own
    # sends go, so it leaves encrypted where the room is.
    ROOM_MESSAGE = "room_message"


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    """One HTTP request to the homeserver, as data.

    ``id`` is unique per request; for ``TO_DEVICE`` it is also the transaction id in the path, so a
    retry after a crash is idempotent on the server.
    """

    id: str
    kind: RequestKind
    method: str
    path: str
    body: dict[str, Any]


def new_request_id() -> str:
    """A fresh random request id (also usable as a transaction id)."""
    return secrets.token_urlsafe(12)


def keys_upload(body: dict[str, Any], request_id: str | None = None) -> OutgoingRequest:
    """``POST /keys/upload`` with any of ``device_keys``, ``one_time_keys``, ``fallback_keys``."""
    return OutgoingRequest(
        request_id or new_request_id(),
        RequestKind.KEYS_UPLOAD,
        "POST",
        f"{CLIENT_V3}/keys/upload",
        body,
    )


def keys_query(users: Sequence[str], request_id: str | None = None) -> OutgoingRequest:
    """``POST /keys/query`` for every device of ``users``."""
    body: dict[str, Any] = {"device_keys": {user: [] for user in users}, "timeout": 10_000}
    return OutgoingRequest(
        request_id or new_request_id(),
        RequestKind.KEYS_QUERY,
        "POST",
        f"{CLIENT_V3}/keys/query",
        body,
    )


def keys_claim(devices: dict[str, list[str]], request_id: str | None = None) -> OutgoingRequest:
    """``POST /keys/claim`` for one ``signed_curve25519`` key of each given device."""
    one_time_keys = {
        user: {device: "signed_curve25519" for device in device_ids}
        for user, device_ids in devices.items()
    }
    body: dict[str, Any] = {"one_time_keys": one_time_keys, "timeout": KEY_CLAIM_TIMEOUT_MS}
    return OutgoingRequest(
        request_id or new_request_id(),
        RequestKind.KEYS_CLAIM,
        "POST",
        f"{CLIENT_V3}/keys/claim",
        body,
    )


def to_device(
    event_type: str,
    messages: Mapping[str, Mapping[str, dict[str, Any]]],
    request_id: str | None = None,
) -> OutgoingRequest:
    """``PUT /sendToDevice/{type}/{txn}``; ``messages`` is ``user -> device -> content``."""
    txn = request_id or new_request_id()
    path = f"{CLIENT_V3}/sendToDevice/{quote(event_type, safe='')}/{quote(txn, safe='')}"
    body = {"messages": {user: dict(devices) for user, devices in messages.items()}}
    return OutgoingRequest(txn, RequestKind.TO_DEVICE, "PUT", path, body)


def signatures_upload(body: dict[str, Any], request_id: str | None = None) -> OutgoingRequest:
    """``POST /keys/signatures/upload``: ``user -> key id (device id or public key) -> object``."""
    return OutgoingRequest(
        request_id or new_request_id(), RequestKind.SIGNATURES_UPLOAD, "POST",
        f"{CLIENT_V3}/keys/signatures/upload", body,
    )


def device_signing_upload(body: dict[str, Any], auth: dict[str, Any] | None = None
                          ) -> OutgoingRequest:
    """``POST /keys/device_signing/upload`` (the cross-signing public keys); ``auth`` for the
    server's user-interactive authentication when it asks for it."""
    full = dict(body, auth=auth) if auth is not None else dict(body)
    return OutgoingRequest(new_request_id(), RequestKind.SIGNATURES_UPLOAD, "POST",
                           f"{CLIENT_V3}/keys/device_signing/upload", full)


def room_message(room_id: str, event_type: str, content: dict[str, Any],
                 request_id: str | None = None) -> OutgoingRequest:
    """``PUT /rooms/{room}/send/{type}/{txn}``, encrypted by the shell where the room is."""
    txn = request_id or new_request_id()
    path = (f"{CLIENT_V3}/rooms/{quote(room_id, safe='')}/send/"
            f"{quote(event_type, safe='')}/{quote(txn, safe='')}")
    return OutgoingRequest(txn, RequestKind.ROOM_MESSAGE, "PUT", path,
                           {"room_id": room_id, "type": event_type, "content": content})
