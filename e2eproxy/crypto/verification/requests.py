"""How a verification flow begins: our request (to-device, or in a room), theirs, or a bare
to-device start from an older client (deprecated by the spec, still to be handled)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from e2eproxy.crypto.clock import Clock
from e2eproxy.crypto.verification import events as ev
from e2eproxy.crypto.verification.events import FlowId, IncomingEvent, Outgoing
from e2eproxy.crypto.verification.flow import (
    FLOW_TIMEOUT_MS,
    REQUEST_MAX_FUTURE_MS,
    LocalDevice,
    PeerKeys,
    Verification,
)


def new_transaction_id() -> str:
    return secrets.token_urlsafe(24)


def request_to_device(
    me: LocalDevice, other_user: str, devices: Sequence[str], *, keys: PeerKeys, clock: Clock,
    transaction_id: str | None = None,
) -> tuple[Verification, list[Outgoing]]:
    """We ask ``devices`` of ``other_user`` (usually our own other devices) to verify.

    Name the devices rather than ``"*"``: when one accepts, the others are told (``m.accepted``).
    """
    flow = Verification(me, FlowId(transaction_id or new_transaction_id()), other_user,
                        keys=keys, clock=clock, we_requested=True, devices=devices)
    content = ev.with_flow(flow.flow_id, {"from_device": me.device_id,
                                          "methods": list(ev.METHODS),
                                          "timestamp": clock.now_ms()})
    return flow, [Outgoing(ev.REQUEST, dict(content), other_user, device)
                  for device in flow.requested_devices]


def room_request_content(me: LocalDevice, other_user: str) -> dict[str, Any]:
    """The ``m.room.message`` to send to a DM with ``other_user``; once the server answers with
    its event id, make the flow with ``request_sent_in_room``."""
    return {
        "msgtype": ev.REQUEST,
        "to": other_user,
        "from_device": me.device_id,
        "methods": list(ev.METHODS),
        "body": f"{me.user_id} is requesting to verify your keys, but your client does not "
                "support in-chat key verification.",
    }


def request_sent_in_room(
    me: LocalDevice, room_id: str, event_id: str, other_user: str, *, keys: PeerKeys,
    clock: Clock,
) -> Verification:
    return Verification(me, FlowId(event_id, room_id), other_user, keys=keys, clock=clock,
                        we_requested=True)


def from_request(
    me: LocalDevice, event: IncomingEvent, *, keys: PeerKeys, clock: Clock
) -> Verification | None:
    """A flow for an incoming request, or ``None`` when it is not one for us to answer
    (malformed, our own, addressed to another user, too old or from the future)."""
    flow, content = ev.flow_id_of(event), event.content
    methods, device = content.get("methods"), content.get("from_device")
    ts = event.origin_server_ts if event.room_id is not None else content.get("timestamp")
    if (flow is None or not event.is_request or not isinstance(device, str)
            or not isinstance(methods, list) or not isinstance(ts, int)):
        return None
    if flow.in_room and (content.get("to") != me.user_id or event.sender == me.user_id):
        return None
    if event.sender == me.user_id and device == me.device_id:
        return None
    now = clock.now_ms()
    if now - ts > FLOW_TIMEOUT_MS or ts - now > REQUEST_MAX_FUTURE_MS:
        return None
    return Verification(me, flow, event.sender, keys=keys, clock=clock, we_requested=False,
                        other_device=device, request_ts=ts, their_methods=methods)


def from_start(
    me: LocalDevice, event: IncomingEvent, *, keys: PeerKeys, clock: Clock
) -> tuple[Verification, list[Outgoing]] | None:
    """A to-device start that no request preceded. The flow waits for ``accept`` and ends at
    the MACs, without done messages, as such older clients expect."""
    flow, device = ev.flow_id_of(event), event.content.get("from_device")
    if flow is None or flow.in_room or event.type != ev.START or not isinstance(device, str):
        return None
    if event.sender == me.user_id and device == me.device_id:
        return None
    verification = Verification(me, flow, event.sender, keys=keys, clock=clock,
                                we_requested=False, other_device=device, expects_done=False)
    return verification, verification._take_bare_start(event.content)
