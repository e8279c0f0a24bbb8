"""Small value types shared by the engine modules: trust levels, sharing policy, room settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"
OLM_ALGORITHM = "m.olm.v1.curve25519-aes-sha2"
DEFAULT_ROTATION_MSGS = 100
DEFAULT_ROTATION_MS = 604_800_000
MIN_ROTATION_MS = 3_600_000
MAX_ROTATION_MSGS = 10_000


class LocalTrust(enum.Enum):
    """What the local user decided about a device."""

    UNSET = "unset"
    VERIFIED = "verified"
    BLACKLISTED = "blacklisted"
    IGNORED = "ignored"


class SharingStrategy(enum.Enum):
    """Which devices receive room keys."""

    ALL_EXCEPT_BLACKLISTED = "all_except_blacklisted"
    # MSC4153 "exclude insecure devices": only devices their owner's identity signed.
    CROSS_SIGNED = "cross_signed"
    ONLY_VERIFIED = "only_verified"


SHARED_HISTORY_VISIBILITIES = frozenset({"shared", "world_readable"})
HISTORY_VISIBILITIES = SHARED_HISTORY_VISIBILITIES | {"invited", "joined"}


def understood_visibility(value: Any) -> str:
    """A room's ``history_visibility`` as the engine acts on it: one the spec defines, else the
    most restrictive (``joined``: no room key for invitees, none marked as shareable history).
    Only a room with no such state at all is ``shared``, the spec's default."""
    return value if isinstance(value, str) and value in HISTORY_VISIBILITIES else "joined"


@dataclass(frozen=True, slots=True)
class EncryptionSettings:
    """How a room's outbound Megolm sessions behave, from its ``m.room.encryption`` state."""

    algorithm: str = MEGOLM_ALGORITHM
    rotation_period_ms: int = DEFAULT_ROTATION_MS
    rotation_period_msgs: int = DEFAULT_ROTATION_MSGS
    history_visibility: str = "shared"

    @property
    def shared_history(self) -> bool:
        return self.history_visibility in SHARED_HISTORY_VISIBILITIES

    @classmethod
    def from_content(
        cls, content: dict[str, Any], history_visibility: str = "shared"
    ) -> EncryptionSettings:
        """Build from ``m.room.encryption`` content; out-of-range values fall back or clamp."""
        period = content.get("rotation_period_ms")
        msgs = content.get("rotation_period_msgs")
        if not isinstance(period, int) or isinstance(period, bool) or period <= 0:
            period = DEFAULT_ROTATION_MS
        if not isinstance(msgs, int) or isinstance(msgs, bool) or msgs <= 0:
            msgs = DEFAULT_ROTATION_MSGS
        algorithm = content.get("algorithm")
        return cls(
            algorithm=algorithm if isinstance(algorithm, str) else "",
            rotation_period_ms=max(period, MIN_ROTATION_MS),
            rotation_period_msgs=min(max(msgs, 1), MAX_ROTATION_MSGS),
            history_visibility=history_visibility,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "rotation_period_ms": self.rotation_period_ms,
            "rotation_period_msgs": self.rotation_period_msgs,
            "history_visibility": self.history_visibility,
        }
