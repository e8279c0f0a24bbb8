"""Build one /sync response for one device from the stub's state (no I/O, no waiting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .filters import SyncFilter
from .roomstore import Room, StoredEvent

if TYPE_CHECKING:
    from .server import StubHomeserver

JsonDict = dict[str, Any]
LEFT = ("leave", "ban")


@dataclass
class SyncRequest:
    user_id: str
    device_id: str
    since: int | None
    filter: SyncFilter
    full_state: bool = False


class SyncBuilder:
    def __init__(self, stub: StubHomeserver, req: SyncRequest) -> None:
        self.stub = stub
        self.req = req
        self.upto = stub.stream.position
        self.after = -1 if req.since is None else req.since

    def build(self) -> tuple[JsonDict, bool]:
        """Return the response body and whether it carries anything new for this device."""
        stub, req = self.stub, self.req
        if req.since is not None:
            stub.to_device.acknowledge(req.user_id, req.device_id, req.since)
        joined, invited, left = self._rooms()
        account_data = self._account_data(None)
        to_device = stub.to_device.pending(req.user_id, req.device_id, self.upto)
        changed, gone = self.device_lists() if req.since is not None else (set(), set())
        fallback_types = stub.keys.unused_fallback_types(req.user_id, req.device_id)
        body: JsonDict = {
            "next_batch": stub.stream.token(self.upto),
            "rooms": {"join": joined, "invite": invited, "leave": left},
            "account_data": {"events": account_data},
            "to_device": {"events": to_device},
            "device_lists": {"changed": sorted(changed), "left": sorted(gone)},
            "presence": {"events": []},
            "device_one_time_keys_count": stub.keys.one_time_key_counts(
                req.user_id, req.device_id
            ),
            "device_unused_fallback_key_types": fallback_types,
            "org.matrix.msc2732.device_unused_fallback_key_types": fallback_types,
        }
        has_data = bool(joined or invited or left or account_data or to_device or changed or gone)
        if stub.omit_empty_sync_fields:
            _omit_empty(body)
        return body, has_data

    # rooms

    def _rooms(self) -> tuple[JsonDict, JsonDict, JsonDict]:
        joined: JsonDict = {}
        invited: JsonDict = {}
        left: JsonDict = {}
        user = self.req.user_id
        for room in self.stub.rooms.rooms_of(user):
            if not self.req.filter.allows_room(room.room_id):
                continue
            now = room.membership(user)
            before = None if self.req.since is None else room.membership_at(user, self.after)
            own_changes = [
                ev for ev in room.events_between(self.after, self.upto)
                if ev.type == "m.room.member" and ev.state_key == user
            ]
            if now == "join":
                newly = before != "join"
                entry = self._timeline_entry(room, self.upto, full=newly or self.req.full_state)
                if newly or self._has_content(entry):
                    joined[room.room_id] = entry
            elif now == "invite" and own_changes:
                invited[room.room_id] = {"invite_state": {"events": self._invite_state(room)}}
            elif now in LEFT and self._wants_leave(before, own_changes):
                leave = own_changes[-1] if own_changes else room.state[("m.room.member", user)]
                if before == "join" or self.req.since is None:
                    left[room.room_id] = self._timeline_entry(room, leave.position, full=False)
                else:  # a rejected or withdrawn invite: only the leave itself
                    left[room.room_id] = self._bare_leave(leave)
        return joined, invited, left

    def _wants_leave(self, before: str | None, own_changes: list[StoredEvent]) -> bool:
        if self.req.since is None:
            return self.req.filter.include_leave
        return bool(own_changes) and before in ("join", "invite")

    def _timeline_entry(self, room: Room, upto: int, full: bool) -> JsonDict:
        flt = self.req.filter
        window = [
            ev for ev in room.events_between(self.after, upto) if flt.timeline.allows(ev.event)
        ]
        limit = flt.timeline_limit
        timeline = window[-limit:] if limit else []
        limited = len(window) > len(timeline)
        start = timeline[0].position - 1 if timeline else upto
        if full or self.req.since is None:
            state_events = list(room.state_at(start).values())
        elif limited:
            gap = {}
            for ev in room.events_between(self.after, start):
                if ev.state_key is not None:
                    gap[(ev.type, ev.state_key)] = ev
            state_events = list(gap.values())
        else:
            state_events = []
        state_events.sort(key=lambda ev: ev.position)
        user, device = self.req.user_id, self.req.device_id
        return {
            "timeline": {
                "events": [ev.for_client(user, device, with_room_id=False) for ev in timeline],
                "limited": limited,
                "prev_batch": self.stub.stream.token(start),
            },
            "state": {
                "events": [
                    ev.for_client(user, device, with_room_id=False) for ev in state_events
                    if flt.state.allows(ev.event)
                ]
            },
            "account_data": {"events": self._account_data(room.room_id)},
            "ephemeral": {"events": []},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},
            "summary": {},
        }

    def _bare_leave(self, leave: StoredEvent) -> JsonDict:
        event = leave.for_client(self.req.user_id, self.req.device_id, with_room_id=False)
        return {
            "timeline": {
                "events": [event], "limited": False,
                "prev_batch": self.stub.stream.token(leave.position - 1),
            },
            "state": {"events": []},
            "account_data": {"events": []},
        }

    @staticmethod
    def _has_content(entry: JsonDict) -> bool:
        return bool(
            entry["timeline"]["events"] or entry["state"]["events"]
            or entry["account_data"]["events"]
        )

    def _invite_state(self, room: Room) -> list[JsonDict]:
        wanted = ("m.room.create", "m.room.name", "m.room.avatar", "m.room.join_rules",
                  "m.room.canonical_alias", "m.room.encryption")
        events = [ev.stripped() for (etype, _), ev in room.state.items() if etype in wanted]
        invite = room.state.get(("m.room.member", self.req.user_id))
        if invite is not None:
            events.append(invite.stripped())
        return events

    # account data

    def _account_data(self, room_id: str | None) -> list[JsonDict]:
        user = self.stub.accounts.user(self.req.user_id)
        if room_id is None:
            source, flt = user.account_data, self.req.filter.account_data
        else:
            source = user.room_account_data.get(room_id, {})
            flt = self.req.filter.room_account_data
        events = [
            {"type": etype, "content": entry.content}
            for etype, entry in sorted(source.items(), key=lambda item: item[1].position)
            if self.after < entry.position <= self.upto
        ]
        return [ev for ev in events if flt.allows(ev)]

    # device lists

    def device_lists(self) -> tuple[set[str], set[str]]:
        rooms, user = self.stub.rooms, self.req.user_id
        changed = set(self.stub.keys.changed_users(self.after, self.upto))
        gone: set[str] = set()
        for room in rooms.rooms_of(user):
            for ev in room.events_between(self.after, self.upto):
                if ev.type != "m.room.member" or ev.state_key is None:
                    continue
                membership = ev.content.get("membership")
                if ev.state_key == user and membership == "join":
                    changed.update(room.members("join"))
                elif ev.state_key == user and membership in LEFT:
                    gone.update(room.members("join"))
                elif membership == "join":
                    changed.add(ev.state_key)
                elif membership in LEFT:
                    gone.add(ev.state_key)
        changed = {u for u in changed if rooms.share_room(user, u)}
        gone = {u for u in gone if u != user and not rooms.share_room(user, u)}
        return changed, gone


def _omit_empty(body: JsonDict) -> None:
    """Drop empty sections the way Synapse does, so clients must cope with absent keys."""
    rooms = {k: v for k, v in body["rooms"].items() if v}
    if rooms:
        body["rooms"] = rooms
    else:
        del body["rooms"]
    for key in ("account_data", "to_device", "presence"):
        if not body[key]["events"]:
            del body[key]
    if not (body["device_lists"]["changed"] or body["device_lists"]["left"]):
        del body["device_lists"]
