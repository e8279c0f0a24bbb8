"""What a homeserver stores for an encrypted room, checked the same way in every tier.

The stub homeserver's `raw_events` and Synapse's own /messages (read directly, never through the
proxy) both go through `assert_ciphertext_only`: the one check that no plaintext reached the
server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

JsonDict = dict[str, Any]

MEGOLM = "m.megolm.v1.aes-sha2"
# Room events a plain client would write: none of these may sit in an encrypted room's history,
# not even with a state key.
MESSAGE_LIKE = frozenset({"m.room.message", "m.reaction", "m.sticker", "m.room.encrypted"})
# Content a client writes that must only ever be inside the ciphertext (m.relates_to stays out,
# so that the server can aggregate relations).
CLEARTEXT_FIELDS = frozenset(
    {"body", "msgtype", "format", "formatted_body", "url", "file", "info", "filename",
     "m.new_content"}
)


def encryption_state(rotation_period_msgs: int | None = None, **settings: Any) -> JsonDict:
    """An `m.room.encryption` state event (Megolm) for `initial_state`, with any other
    settings of its content."""
    content: JsonDict = {"algorithm": MEGOLM, **settings}
    if rotation_period_msgs is not None:
        content["rotation_period_msgs"] = rotation_period_msgs
    return {"type": "m.room.encryption", "state_key": "", "content": content}


def raw_messages(raw_events: Iterable[JsonDict]) -> list[JsonDict]:
    """The non-state events of a room's raw history (what senders wrote, as stored)."""
    return [e for e in raw_events if "state_key" not in e]


def assert_ciphertext_only(raw_events: Iterable[JsonDict]) -> list[JsonDict]:
    """Check a room's history as the server stores it: every non-state event, and every
    message-like event at all, is a Megolm `m.room.encrypted` event with a ciphertext and a
    session id, and no cleartext field beside them.

    Returns the encrypted events, in the order given. Fails on any plaintext message, reaction,
    sticker or other non-state event, and on an encrypted event that leaks plaintext beside it.
    """
    encrypted = []
    for event in raw_events:
        kind = event.get("type")
        if "state_key" in event and kind not in MESSAGE_LIKE:
            continue
        assert kind == "m.room.encrypted", f"plaintext {kind} on the server: {event}"
        content = event.get("content", {})
        assert content.get("algorithm") == MEGOLM, f"not Megolm: {event}"
        ciphertext, session_id = content.get("ciphertext"), content.get("session_id")
        assert isinstance(ciphertext, str) and ciphertext, f"no ciphertext: {event}"
        assert isinstance(session_id, str) and session_id, f"no session id: {event}"
        leaked = CLEARTEXT_FIELDS & set(content)
        assert not leaked, f"cleartext fields {sorted(leaked)} beside the ciphertext: {event}"
        encrypted.append(event)
    return encrypted


def megolm_message_index(ciphertext: str) -> int:
    """The message index in a Megolm message: version byte 3, then protobuf field 1 (varint)."""
    data = base64.b64decode(ciphertext + "=" * (-len(ciphertext) % 4))
    assert data[0] == 3 and data[1] == 0x08, f"not a Megolm v1 message: {data[:4]!r}"
    index, shift = 0, 0
    for byte in data[2:]:
        index |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return index
    raise AssertionError("truncated varint in a Megolm message")
