"""Result values the engine returns: decrypted events, typed failures, sync results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from e2eproxy.types import RoomId, SessionId


class FailureReason(enum.Enum):
    """Why a room event could not be decrypted."""

    MALFORMED = "malformed"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    MISSING_SESSION = "missing_session"
    UNKNOWN_MESSAGE_INDEX = "unknown_message_index"
    DECRYPTION_FAILED = "decryption_failed"
    REPLAYED = "replayed"
    ROOM_MISMATCH = "room_mismatch"
    PAYLOAD_INVALID = "payload_invalid"
    SENDER_MISMATCH = "sender_mismatch"


class SenderTrust(enum.Enum):
    """How much we know about the device that created a Megolm session."""

    VERIFIED = "verified"
    CROSS_SIGNED = "cross-signed"  # signed by its owner's identity, which we did not verify
    UNVERIFIED = "unverified"
    BLACKLISTED = "blacklisted"
    UNKNOWN_DEVICE = "unknown_device"
    MISMATCHED_SENDER = "mismatched_sender"
    IMPORTED = "imported"


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A decrypted room event, in the shape the client expects, plus who sent it."""

    event: dict[str, Any]
    session_id: SessionId
    message_index: int
    sender_key: str
    sender_device: str | None
    trust: SenderTrust
    # The sender's identity changed after we verified it (not accepted yet).
    verification_violation: bool = False


@dataclass(frozen=True, slots=True)
class DecryptionFailure:
    """A room event we could not decrypt, and why. ``withheld_code`` when the sender told us."""

    reason: FailureReason
    message: str
    session_id: str | None = None
    withheld_code: str | None = None


@dataclass(frozen=True, slots=True)
class RoomKeyInfo:
    """A room key that arrived in a sync: decryption of its events may now succeed."""

    room_id: RoomId
    session_id: SessionId
    first_known_index: int


@dataclass(frozen=True, slots=True)
class ToDeviceFailure:
    """A to-device event we dropped; ``reason`` is a short machine-readable code."""

    sender: str
    event_type: str
    reason: str


@dataclass(slots=True)
class SyncResult:
    """What ``receive_sync`` hands back to the shell: the room keys and withheld notices that
    arrived (decryption may change now), the to-device events that were dropped and why, and
    the sessions the store should load for the engine.
    Every to-device event is consumed in the engine by the handler of its type."""

    room_keys: list[RoomKeyInfo] = field(default_factory=list)
    withheld: list[tuple[RoomId, SessionId, str]] = field(default_factory=list)
    failures: list[ToDeviceFailure] = field(default_factory=list)
    # Inbound sessions our own devices asked for that the engine does not hold in memory: load
    # them from the store in the same step (``load_inbound_group_sessions``) to answer.
    sessions_to_load: list[tuple[RoomId, SessionId]] = field(default_factory=list)
    # The type of each new to-device event taken in (not the ones seen before), in order; an
    # Olm-encrypted one by the type inside when it decrypted (for the shell's metrics).
    to_device_types: list[str] = field(default_factory=list)
