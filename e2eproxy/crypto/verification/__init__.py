"""Interactive key verification (spec "Device verification"): one sans-I/O state machine per
flow (``Verification``), how flows begin (``requests``), SAS ``m.sas.v1`` over vodozemac
(``sas``), and the per-account registry that routes events to flows (``Verifications``)."""

from e2eproxy.crypto.verification.emoji import SAS_EMOJI, Emoji
from e2eproxy.crypto.verification.events import (
    Cancellation,
    FlowId,
    IncomingEvent,
    Outgoing,
    VerifiedKeys,
    flow_id_of,
)
from e2eproxy.crypto.verification.flow import (
    InvalidAction,
    LocalDevice,
    PeerKeys,
    Phase,
    Verification,
)
from e2eproxy.crypto.verification.registry import Verifications
from e2eproxy.crypto.verification.requests import (
    from_request,
    from_start,
    request_sent_in_room,
    request_to_device,
    room_request_content,
)

__all__ = [
    "SAS_EMOJI",
    "Cancellation",
    "Emoji",
    "FlowId",
    "IncomingEvent",
    "InvalidAction",
    "LocalDevice",
    "Outgoing",
    "PeerKeys",
    "Phase",
    "Verification",
    "Verifications",
    "VerifiedKeys",
    "flow_id_of",
    "from_request",
    "from_start",
    "request_sent_in_room",
    "request_to_device",
    "room_request_content",
]
