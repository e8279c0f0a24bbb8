"""Where encrypted room events sit in client-server responses, and how they are replaced.

Pure functions over parsed JSON. Each `*_slots` function yields `Slot`s: a room id and the list and
index holding one event, so the shell can collect every event of a response, decrypt them in one
batch, then write the results back in place (the body is our own parsed copy of the server's bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENCRYPTED = "m.room.encrypted"

# To-device types that belong to the crypto layer: the proxy consumes them, the plain client
# (which has no use for them and may choke on them) never sees them.
CRYPTO_TO_DEVICE_PREFIXES = (
    "m.room.encrypted",
    "m.room_key",
    "org.matrix.room_key",
    "m.forwarded_room_key",
    "m.dummy",
    "m.key.verification.",
    "m.secret.",
)


@dataclass(frozen=True, slots=True)
class Slot:
    """One event in a response: `container[index]`, in room `room_id`."""

    room_id: str
    container: list[Any]
    index: int

    @property
    def event(self) -> Any:
        return self.container[self.index]

    def replace(self, event: dict[str, Any]) -> None:
        self.container[self.index] = event


def is_encrypted(event: Any) -> bool:
    """An encrypted event with ciphertext to decrypt. A redacted one has none left: it goes to
    the client as it is, so it shows as deleted rather than as undecryptable."""
    if not isinstance(event, dict) or event.get("type") != ENCRYPTED:
        return False
    unsigned = event.get("unsigned")
    if isinstance(unsigned, dict) and "redacted_because" in unsigned:
        return False
    return event.get("content") != {}


def _list_slots(room_id: str, events: Any) -> Iterator[Slot]:
    if isinstance(events, list):
        for index, event in enumerate(events):
            if is_encrypted(event):
                yield Slot(room_id, events, index)


def sync_room_parts(
    body: Any, memberships: tuple[str, ...] = ("join", "leave")
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(room id, "timeline" or "state", the part holding `events`) of each room in a /sync body."""
    rooms = body.get("rooms") if isinstance(body, dict) else None
    if not isinstance(rooms, dict):
        return
    for membership in memberships:
        section = rooms.get(membership)
        if not isinstance(section, dict):
            continue
        for room_id, room in section.items():
            for name in ("timeline", "state"):
                part = room.get(name) if isinstance(room, dict) else None
                if isinstance(part, dict) and isinstance(part.get("events"), list):
                    yield room_id, name, part


def sync_slots(body: Any) -> Iterator[Slot]:
    """Encrypted events in the `join` and `leave` rooms of a /sync body (timeline and state)."""
    for room_id, _, part in sync_room_parts(body):
        yield from _list_slots(room_id, part["events"])


VERIFICATION_PREFIX = "m.key.verification."


def is_verification_event(event: Any) -> bool:
    """An in-room verification event (as sent, or once decrypted)."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return False
    if event["type"].startswith(VERIFICATION_PREFIX):
        return True
    content = event.get("content")
    return event["type"] == "m.room.message" and isinstance(content, dict) and (
        content.get("msgtype") == VERIFICATION_PREFIX + "request"
    )


def verification_events(body: Any) -> list[tuple[str, dict[str, Any]]]:
    """(room id, event) of the verification events in a /sync body's joined timelines."""
    return [
        (room_id, event)
        for room_id, name, part in sync_room_parts(body, ("join",))
        if name == "timeline"
        for event in part["events"]
        if is_verification_event(event)
    ]


def chunk_slots(room_id: str, body: Any) -> Iterator[Slot]:
    """/messages, /relations and /threads: `chunk` (and `state` for /messages)."""
    if isinstance(body, dict):
        yield from _list_slots(room_id, body.get("chunk"))
        yield from _list_slots(room_id, body.get("state"))


def context_slots(room_id: str, body: Any) -> Iterator[Slot]:
    """/context: the event itself, the events around it, and state."""
    if not isinstance(body, dict):
        return
    holder = [body.get("event")]
    if is_encrypted(holder[0]):
        yield _BodyKeySlot(room_id, holder, 0, body, "event")
    for name in ("events_before", "events_after", "state"):
        yield from _list_slots(room_id, body.get(name))


def event_slots(room_id: str, body: Any) -> Iterator[Slot]:
    """/event: the body is the event."""
    if is_encrypted(body):
        yield _WholeBodySlot(room_id, [body], 0, body)


def notification_slots(body: Any) -> Iterator[Slot]:
    """/notifications: `notifications[].event`, each with its own room."""
    items = body.get("notifications") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return
    for item in items:
        if isinstance(item, dict) and is_encrypted(item.get("event")):
            room_id = item.get("room_id")
            if isinstance(room_id, str):
                yield _BodyKeySlot(room_id, [item["event"]], 0, item, "event")


def search_slots(body: Any) -> Iterator[Slot]:
    """/search: room event results and their context."""
    categories = body.get("search_categories") if isinstance(body, dict) else None
    room_events = categories.get("room_events") if isinstance(categories, dict) else None
    results = room_events.get("results") if isinstance(room_events, dict) else None
    if not isinstance(results, list):
        return
    for item in results:
        if not isinstance(item, dict):
            continue
        result = item.get("result")
        room_id = result.get("room_id") if isinstance(result, dict) else None
        if not isinstance(room_id, str):
            continue
        if is_encrypted(result):
            yield _BodyKeySlot(room_id, [result], 0, item, "result")
        context = item.get("context")
        if isinstance(context, dict):
            for name in ("events_before", "events_after"):
                yield from _list_slots(room_id, context.get(name))


@dataclass(frozen=True, slots=True)
class _BodyKeySlot(Slot):
    """An event held under a key of a dict rather than in a list."""

    owner: dict[str, Any]
    key: str

    def replace(self, event: dict[str, Any]) -> None:
        self.container[self.index] = event
        self.owner[self.key] = event


@dataclass(frozen=True, slots=True)
class _WholeBodySlot(Slot):
    """The response body is the event: replace its contents in place."""

    owner: dict[str, Any]

    def replace(self, event: dict[str, Any]) -> None:
        self.container[self.index] = event
        self.owner.clear()
        self.owner.update(event)


def undecryptable_notice(event: dict[str, Any], reason: str) -> dict[str, Any]:
    """A visible stand-in for an event we cannot decrypt, keeping its id, sender and time."""
    notice = {k: v for k, v in event.items() if k not in ("type", "content")}
    notice["type"] = "m.room.message"
    notice["content"] = {
        "msgtype": "m.notice",
        "body": f"** Unable to decrypt: {reason} **",
        "org.e2eproxy.undecryptable": True,
    }
    relates_to = (
        event.get("content", {}).get("m.relates_to")
        if isinstance(event.get("content"), dict)
        else None
    )
    if isinstance(relates_to, dict):
        notice["content"]["m.relates_to"] = relates_to
    return notice


def is_crypto_to_device(event: Any) -> bool:
    event_type = event.get("type") if isinstance(event, dict) else None
    return isinstance(event_type, str) and event_type.startswith(CRYPTO_TO_DEVICE_PREFIXES)


def strip_crypto_to_device(body: Any) -> None:
    """Remove the crypto layer's to-device events from a /sync body, in place."""
    to_device = body.get("to_device") if isinstance(body, dict) else None
    if isinstance(to_device, dict) and isinstance(to_device.get("events"), list):
        to_device["events"] = [e for e in to_device["events"] if not is_crypto_to_device(e)]
