"""Verification event shapes (spec "Key verification framework"): types, cancel codes, flow ids,
and the incoming/outgoing values the machines take and return.

A flow is named by ``transaction_id`` in to-device events, or, in a room, by the event id of the
``m.room.message`` request that the later events point at with ``m.relates_to``
``{"rel_type": "m.reference", "event_id": ...}``. That id is also what the SAS and MAC info
strings call the transaction id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REQUEST = "m.key.verification.request"
READY = "m.key.verification.ready"
START = "m.key.verification.start"
ACCEPT = "m.key.verification.accept"
KEY = "m.key.verification.key"
MAC = "m.key.verification.mac"
DONE = "m.key.verification.done"
CANCEL = "m.key.verification.cancel"
ROOM_MESSAGE = "m.room.message"  # an in-room request is a message with msgtype REQUEST
VERIFICATION_TYPES = frozenset({REQUEST, READY, START, ACCEPT, KEY, MAC, DONE, CANCEL})

SAS_V1 = "m.sas.v1"
METHODS = (SAS_V1,)

# Cancel codes (spec m.key.verification.cancel, and the SAS section).
USER = "m.user"
TIMEOUT = "m.timeout"
UNKNOWN_TRANSACTION = "m.unknown_transaction"
UNKNOWN_METHOD = "m.unknown_method"
UNEXPECTED_MESSAGE = "m.unexpected_message"
KEY_MISMATCH = "m.key_mismatch"
USER_MISMATCH = "m.user_mismatch"
INVALID_MESSAGE = "m.invalid_message"
ACCEPTED = "m.accepted"
MISMATCHED_COMMITMENT = "m.mismatched_commitment"
MISMATCHED_SAS = "m.mismatched_sas"


@dataclass(frozen=True, slots=True)
class FlowId:
    """A to-device transaction id, or (``room_id`` set) the in-room request's event id."""

    id: str
    room_id: str | None = None

    @property
    def in_room(self) -> bool:
        return self.room_id is not None


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """One verification event as the engine received it.

    ``sender_device`` is known only for Olm-decrypted to-device events; ``room_id``,
    ``event_id`` and ``origin_server_ts`` are set for in-room events.
    """

    type: str
    content: Mapping[str, Any]
    sender: str
    sender_device: str | None = None
    room_id: str | None = None
    event_id: str | None = None
    origin_server_ts: int | None = None

    @property
    def from_device(self) -> str | None:
        """The device the event names (request, ready, start) or came from over Olm."""
        named = self.content.get("from_device")
        return named if isinstance(named, str) else self.sender_device

    @property
    def is_request(self) -> bool:
        if self.room_id is None:
            return self.type == REQUEST
        return self.type == ROOM_MESSAGE and self.content.get("msgtype") == REQUEST


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Something to send: a to-device event (``user_id``/``device_id``, ``"*"`` for all the
    user's devices) or an in-room event (``room_id``). The content already names its flow."""

    type: str
    content: dict[str, Any]
    user_id: str | None = None
    device_id: str | None = None
    room_id: str | None = None

    @property
    def to_device(self) -> bool:
        return self.room_id is None


@dataclass(frozen=True, slots=True)
class Cancellation:
    code: str
    reason: str
    by_us: bool


@dataclass(frozen=True, slots=True)
class VerifiedKeys:
    """What a finished SAS confirmed through the other side's MAC: the other device's Ed25519
    key (when it was MACed) and the other user's master key (when it was MACed)."""

    user_id: str
    device_id: str
    device_ed25519: str | None = None
    master_key: str | None = None
    key_ids: tuple[str, ...] = field(default=())


def flow_id_of(event: IncomingEvent) -> FlowId | None:
    """The flow ``event`` belongs to, or ``None`` if it names none (not ours to handle)."""
    if event.room_id is None:
        if event.type not in VERIFICATION_TYPES:
            return None
        txn = event.content.get("transaction_id")
        return FlowId(txn) if isinstance(txn, str) and txn else None
    if event.is_request:
        return FlowId(event.event_id, event.room_id) if event.event_id else None
    if event.type not in VERIFICATION_TYPES:
        return None
    relation = event.content.get("m.relates_to")
    if not isinstance(relation, Mapping) or relation.get("rel_type") != "m.reference":
        return None
    target = relation.get("event_id")
    return FlowId(target, event.room_id) if isinstance(target, str) and target else None


def with_flow(flow: FlowId, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` plus what names the flow: ``transaction_id`` or the ``m.reference``."""
    content = dict(fields)
    if flow.in_room:
        content["m.relates_to"] = {"rel_type": "m.reference", "event_id": flow.id}
    else:
        content["transaction_id"] = flow.id
    return content


def cancel_content(flow: FlowId, code: str, reason: str) -> dict[str, Any]:
    return with_flow(flow, {"code": code, "reason": reason})


def unknown_transaction_reply(event: IncomingEvent) -> Outgoing | None:
    """The spec's answer to a to-device event naming a flow we do not know: a cancel with
    ``m.unknown_transaction``; never for a start (it may open a flow) or a cancel (no loops).

    In a room nothing is sent: everyone in it sees every flow there (another device of ours,
    other users), and a cancel would end a flow that is not ours. A to-device event whose
    device we cannot tell (accept, key, mac and done name none) cannot be answered either.
    """
    flow = flow_id_of(event)
    if flow is None or flow.in_room or event.type in (START, CANCEL, REQUEST):
        return None
    device = event.from_device
    if device is None:
        return None
    content = cancel_content(flow, UNKNOWN_TRANSACTION, "unknown verification flow")
    return Outgoing(CANCEL, content, user_id=event.sender, device_id=device)
