"""Room actions with the permission rules a homeserver enforces (membership, power levels)."""

from __future__ import annotations

import copy
from typing import Any

from .errors import MatrixError, bad_json_field, forbidden
from .roomstore import Room, RoomStore, StoredEvent

JsonDict = dict[str, Any]

_PRESETS: dict[str, JsonDict] = {
    "private_chat": {"join_rule": "invite", "guest_access": "can_join", "invitees_op": False},
    "trusted_private_chat": {
        "join_rule": "invite", "guest_access": "can_join", "invitees_op": True,
    },
    "public_chat": {"join_rule": "public", "guest_access": None, "invitees_op": False},
}


def _power_levels(creator: str, invitees: list[str], invitees_op: bool) -> JsonDict:
    users = {creator: 100}
    if invitees_op:
        users.update({invitee: 100 for invitee in invitees})
    return {
        "users": users, "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0, "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0, "historical": 100,
    }


class RoomOps:
    def __init__(self, store: RoomStore) -> None:
        self.store = store

    def _require_joined(self, room: Room, user_id: str) -> None:
        if room.membership(user_id) != "join":
            raise forbidden(f"User {user_id} not in room {room.room_id}")

    def _require_level(self, room: Room, user_id: str, needed: int, what: str) -> None:
        if room.power_level(user_id) < needed:
            raise forbidden(f"You don't have permission to {what}")

    def _member(
        self, room: Room, sender: str, target: str, membership: str, **content: Any
    ) -> StoredEvent:
        body = {"membership": membership, **{k: v for k, v in content.items() if v is not None}}
        return self.store.append(room, sender, "m.room.member", body, state_key=target)

    def create_room(self, creator: str, body: JsonDict) -> Room:
        preset_name = body.get("preset") or (
            "public_chat" if body.get("visibility") == "public" else "private_chat"
        )
        if preset_name not in _PRESETS:
            raise bad_json_field(f"Unknown preset {preset_name!r}")
        preset = _PRESETS[preset_name]
        invitees = list(body.get("invite", []))
        alias = None
        if body.get("room_alias_name"):
            alias = f"#{body['room_alias_name']}:{self.store.server_name}"
            if alias in self.store.aliases:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")
        room = self.store.new_room()
        room.version = str(body.get("room_version", room.version))
        append = self.store.append
        create_content = {"room_version": room.version, "creator": creator,
                          **body.get("creation_content", {})}
        append(room, creator, "m.room.create", create_content, state_key="")
        self._member(room, creator, creator, "join")
        levels = _power_levels(creator, invitees, preset["invitees_op"])
        levels.update(copy.deepcopy(body.get("power_level_content_override", {})))
        append(room, creator, "m.room.power_levels", levels, state_key="")
        if alias:
            self.store.aliases[alias] = room.room_id
            append(room, creator, "m.room.canonical_alias", {"alias": alias}, state_key="")
        append(room, creator, "m.room.join_rules", {"join_rule": preset["join_rule"]},
               state_key="")
        append(room, creator, "m.room.history_visibility", {"history_visibility": "shared"},
               state_key="")
        if preset["guest_access"]:
            append(room, creator, "m.room.guest_access",
                   {"guest_access": preset["guest_access"]}, state_key="")
        for item in body.get("initial_state", []):
            append(room, creator, item["type"], item.get("content", {}),
                   state_key=item.get("state_key", ""))
        if "name" in body:
            append(room, creator, "m.room.name", {"name": body["name"]}, state_key="")
        if "topic" in body:
            append(room, creator, "m.room.topic", {"topic": body["topic"]}, state_key="")
        for invitee in invitees:
            self._member(room, creator, invitee, "invite",
                         is_direct=True if body.get("is_direct") else None)
        self.store.stream.notify()
        return room

    def invite(self, room: Room, sender: str, target: str, reason: str | None = None) -> None:
        self._require_joined(room, sender)
        self._require_level(room, sender, room.required_level("invite", 0), "invite")
        current = room.membership(target)
        if current in ("join", "ban"):
            raise forbidden(f"{target} is already in the room." if current == "join"
                            else f"{target} is banned from the room")
        self._member(room, sender, target, "invite", reason=reason)
        self.store.stream.notify()

    def join(self, room: Room, user_id: str) -> None:
        current = room.membership(user_id)
        if current == "join":
            return
        if current == "ban":
            raise forbidden("You are banned from this room")
        join_rule = (room.state_content("m.room.join_rules") or {}).get("join_rule", "invite")
        if current != "invite" and join_rule != "public":
            raise forbidden("You are not invited to this room.")
        self._member(room, user_id, user_id, "join")
        self.store.stream.notify()

    def leave(self, room: Room, user_id: str, reason: str | None = None) -> None:
        if room.membership(user_id) not in ("join", "invite"):
            raise forbidden(f"User {user_id} not in room {room.room_id}")
        self._member(room, user_id, user_id, "leave", reason=reason)
        self.store.stream.notify()

    def kick(self, room: Room, sender: str, target: str, reason: str | None = None) -> None:
        self._require_joined(room, sender)
        if room.membership(target) not in ("join", "invite"):
            raise forbidden(f"{target} is not in the room")
        needed = max(room.required_level("kick"), room.power_level(target) + 1)
        self._require_level(room, sender, needed, "kick")
        self._member(room, sender, target, "leave", reason=reason)
        self.store.stream.notify()

    def set_state(
        self, room: Room, sender: str, event_type: str, state_key: str, content: JsonDict,
        device_id: str | None = None,
    ) -> StoredEvent:
        self._require_joined(room, sender)
        needed = room.required_event_level(event_type, is_state=True)
        self._require_level(room, sender, needed, f"send {event_type}")
        current = room.state.get((event_type, state_key))
        if current is not None and current.sender == sender and current.content == content:
            return current
        stored = self.store.append(room, sender, event_type, content, state_key=state_key,
                                   device_id=device_id)
        self.store.stream.notify()
        return stored

    def send(
        self, room: Room, sender: str, event_type: str, content: JsonDict,
        device_id: str | None = None, txn_id: str | None = None,
    ) -> StoredEvent:
        self._require_joined(room, sender)
        needed = room.required_event_level(event_type, is_state=False)
        self._require_level(room, sender, needed, f"send {event_type}")
        stored = self.store.append(room, sender, event_type, content, device_id=device_id,
                                   txn_id=txn_id)
        self.store.stream.notify()
        return stored

    def redact(
        self, room: Room, sender: str, event_id: str, reason: str | None,
        device_id: str | None = None, txn_id: str | None = None,
    ) -> StoredEvent:
        self._require_joined(room, sender)
        target = room.by_id.get(event_id)
        if target is not None and target.sender != sender:
            self._require_level(room, sender, room.required_level("redact"), "redact")
        content = {} if reason is None else {"reason": reason}
        redaction = self.store.append(
            room, sender, "m.room.redaction", content, device_id=device_id, txn_id=txn_id,
            extra={"redacts": event_id},
        )
        if target is not None:
            self.store.redact(target, redaction)
        self.store.stream.notify()
        return redaction
