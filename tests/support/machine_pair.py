"""Engines wired together by a fake homeserver ("router"), for unit tests.

``FakeServer`` answers ``/keys/upload``, ``/keys/query``, ``/keys/claim`` (one-time keys consumed,
fallback keys reused) and ``/sendToDevice`` (delivered in the recipient's next sync body), and keeps
just enough room state to emit membership and encryption events in sync bodies. ``Client`` drives
one ``OlmMachine`` against it. No I/O, no sleeps: time is a ``ManualClock``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from e2eproxy.crypto.changes import EngineSnapshot
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.results import Decrypted, DecryptionFailure, SyncResult
from e2eproxy.protocol.api import OutgoingRequest, RequestKind

DeviceKey = tuple[str, str]
ENCRYPTION = {"algorithm": "m.megolm.v1.aes-sha2"}


@dataclass
class Room:
    room_id: str
    members: dict[str, str] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)


class FakeServer:
    """An in-memory homeserver for the E2EE endpoints."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.device_keys: dict[str, dict[str, dict[str, Any]]] = {}
        self.otks: dict[DeviceKey, dict[str, Any]] = {}
        self.fallback: dict[DeviceKey, dict[str, Any]] = {}
        self.fallback_unused: dict[DeviceKey, bool] = {}
        self.inbox: dict[DeviceKey, list[dict[str, Any]]] = {}
        self.changed: dict[DeviceKey, set[str]] = {}
        self.room_events: dict[DeviceKey, dict[str, list[dict[str, Any]]]] = {}
        self.rooms: dict[str, Room] = {}
        self.clients: list[Client] = []
        self.requests: list[tuple[DeviceKey, OutgoingRequest]] = []
        self._ids = itertools.count(1)
        self.claims_served = 0
        # Cross-signing keys by user: master_key, self_signing_key, user_signing_key objects.
        self.cross_signing: dict[str, dict[str, dict[str, Any]]] = {}
        # Room events sent by engines (in-room verification), for the test to deliver.
        self.room_messages: list[dict[str, Any]] = []

    # -- requests ------------------------------------------------------------------------
    def handle(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        self.requests.append((owner, request))
        handlers = {
            RequestKind.KEYS_UPLOAD: self._upload,
            RequestKind.KEYS_QUERY: self._query,
            RequestKind.KEYS_CLAIM: self._claim,
            RequestKind.TO_DEVICE: self._to_device,
            RequestKind.SIGNATURES_UPLOAD: self._signatures,
            RequestKind.ROOM_MESSAGE: self._room_message,
        }
        return handlers[request.kind](owner, request)

    def _signatures(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        user = owner[0]
        if request.path.endswith("/keys/device_signing/upload"):
            keys = {k: copy.deepcopy(v) for k, v in request.body.items() if k != "auth"}
            self.cross_signing[user] = keys
            self._notify_changed(user)
            return {}
        for signed_user, objects in request.body.items():
            for name, signed in objects.items():
                target = self._signature_target(signed_user, name)
                if target is None:
                    continue
                for signer, sigs in signed.get("signatures", {}).items():
                    target.setdefault("signatures", {}).setdefault(signer, {}).update(sigs)
            self._notify_changed(signed_user)
        return {"failures": {}}

    def _signature_target(self, user: str, name: str) -> dict[str, Any] | None:
        device = self.device_keys.get(user, {}).get(name)
        if device is not None:
            return device
        for key in self.cross_signing.get(user, {}).values():
            if f"ed25519:{name}" in key.get("keys", {}):
                return key
        return None

    def _room_message(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        event_id = f"$room{next(self._ids)}"
        self.room_messages.append({
            "type": request.body["type"], "content": copy.deepcopy(request.body["content"]),
            "sender": owner[0], "event_id": event_id, "room_id": request.body["room_id"],
            "origin_server_ts": self.clock.now_ms(),
        })
        return {"event_id": event_id}

    def _upload(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        body = request.body
        if "device_keys" in body:
            user, device = owner
            assert user not in self.device_keys or device not in self.device_keys[user], (
                "device keys uploaded twice"
            )
            self.device_keys.setdefault(user, {})[device] = copy.deepcopy(body["device_keys"])
            self._notify_changed(user)
        self.otks.setdefault(owner, {}).update(copy.deepcopy(body.get("one_time_keys", {})))
        if body.get("fallback_keys"):
            self.fallback[owner] = copy.deepcopy(body["fallback_keys"])
            self.fallback_unused[owner] = True
        return {"one_time_key_counts": {"signed_curve25519": len(self.otks.get(owner, {}))}}

    def _query(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        users = list(request.body["device_keys"])
        answer = {user: copy.deepcopy(self.device_keys.get(user, {})) for user in users}
        result: dict[str, Any] = {"device_keys": answer, "failures": {}}
        for section, name in (("master_keys", "master_key"),
                              ("self_signing_keys", "self_signing_key"),
                              ("user_signing_keys", "user_signing_key")):
            listed = {
                user: copy.deepcopy(self.cross_signing[user][name]) for user in users
                if name in self.cross_signing.get(user, {})
                and (name != "user_signing_key" or user == owner[0])  # only one's own USK
            }
            result[section] = listed
        return result

    def _claim(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        result: dict[str, dict[str, Any]] = {}
        for user, devices in request.body["one_time_keys"].items():
            for device in devices:
                key = (user, device)
                otks = self.otks.get(key, {})
                if otks:
                    key_id = next(iter(otks))
                    result.setdefault(user, {})[device] = {key_id: otks.pop(key_id)}
                elif self.fallback.get(key):
                    self.fallback_unused[key] = False
                    result.setdefault(user, {})[device] = copy.deepcopy(self.fallback[key])
                self.claims_served += 1
        return {"one_time_keys": result, "failures": {}}

    def _to_device(self, owner: DeviceKey, request: OutgoingRequest) -> dict[str, Any]:
        event_type = unquote(request.path.split("/")[-2])
        for user, devices in request.body["messages"].items():
            for device, content in devices.items():
                targets = self.device_keys.get(user, {}) if device == "*" else [device]
                for target in targets:
                    self.inbox.setdefault((user, target), []).append(
                        {"type": event_type, "sender": owner[0], "content": copy.deepcopy(content)}
                    )
        return {}

    def _notify_changed(self, user: str) -> None:
        for client in self.clients:
            self.changed.setdefault(client.key, set()).add(user)

    # -- sync ----------------------------------------------------------------------------
    def sync_body(self, owner: DeviceKey) -> dict[str, Any]:
        events = self.inbox.pop(owner, [])
        rooms = self.room_events.pop(owner, {})
        body: dict[str, Any] = {
            "next_batch": f"s{next(self._ids)}",
            "to_device": {"events": events},
            "device_lists": {"changed": sorted(self.changed.pop(owner, set())), "left": []},
            "device_one_time_keys_count": {"signed_curve25519": len(self.otks.get(owner, {}))},
            "device_unused_fallback_key_types": (
                ["signed_curve25519"] if self.fallback_unused.get(owner) else []
            ),
            "rooms": {"join": {r: {"timeline": {"events": evs}} for r, evs in rooms.items()}},
        }
        return body

    # -- rooms ---------------------------------------------------------------------------
    def _state(self, sender: str, event_type: str, state_key: str,
               content: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": event_type, "state_key": state_key, "sender": sender,
            "content": content, "event_id": f"$state{next(self._ids)}",
            "origin_server_ts": self.clock.now_ms(),
        }

    def _broadcast(self, room: Room, event: dict[str, Any], extra: list[str] | None = None
                   ) -> None:
        users = {u for u, m in room.members.items() if m in ("join", "invite")} | set(extra or [])
        for client in self.clients:
            if client.user_id in users:
                self.room_events.setdefault(client.key, {}).setdefault(
                    room.room_id, []
                ).append(copy.deepcopy(event))

    def create_room(self, room_id: str, creator: str, members: list[str],
                    encryption: dict[str, Any] | None = None) -> Room:
        room = Room(room_id, {u: "join" for u in [creator, *members]})
        self.rooms[room_id] = room
        content = dict(ENCRYPTION if encryption is None else encryption)
        self._broadcast(room, self._state(creator, "m.room.encryption", "", content))
        for user in room.members:
            self._broadcast(room, self._state(user, "m.room.member", user, {"membership": "join"}))
        return room

    def set_membership(self, room_id: str, user: str, membership: str) -> None:
        room = self.rooms[room_id]
        room.members[user] = membership
        event = self._state(user, "m.room.member", user, {"membership": membership})
        self._broadcast(room, event, extra=[user])
        if membership == "join":  # the joiner also learns the room's state
            self._broadcast(room, self._state(user, "m.room.encryption", "", dict(ENCRYPTION)),
                            extra=[user])

    def post_event(self, room_id: str, sender: str, content: dict[str, Any]) -> dict[str, Any]:
        event = {
            "type": "m.room.encrypted", "sender": sender, "content": content,
            "event_id": f"$ev{next(self._ids)}", "origin_server_ts": self.clock.now_ms(),
            "room_id": room_id, "unsigned": {},
        }
        self.rooms[room_id].timeline.append(event)
        return event


class Client:
    """One device: an ``OlmMachine`` plus the glue a real I/O shell would be."""

    def __init__(self, server: FakeServer, user_id: str, device_id: str,
                 machine: OlmMachine | None = None) -> None:
        self.server = server
        self.user_id = user_id
        self.device_id = device_id
        self.machine = machine or OlmMachine(user_id, device_id, server.clock)
        server.clients.append(self)
        self.changes: list[Any] = []
        self.store = FoldingStore()

    @property
    def key(self) -> DeviceKey:
        return (self.user_id, self.device_id)

    def persist(self) -> None:
        changes = self.machine.take_changes()
        self.changes.append(changes)
        self.store.save(changes)

    def restart(self, *, with_inbound: bool = True, cache_size: int = 10_000) -> None:
        """Simulate a crash and restart: rebuild the engine from what the store holds."""
        self.persist()
        self.machine = OlmMachine.restore(
            self.user_id, self.device_id, self.server.clock,
            self.store.snapshot(with_inbound=with_inbound),
            inbound_cache_size=cache_size, inbound_complete=with_inbound,
        )

    def flush(self) -> None:
        """Send every outgoing request until there are none left."""
        for _ in range(20):
            requests = self.machine.outgoing_requests()
            self.persist()
            if not requests:
                return
            for request in requests:
                self.answer(request)
        raise AssertionError("outgoing requests never settle")

    def answer(self, request: OutgoingRequest) -> None:
        response = self.server.handle(self.key, request)
        self.machine.mark_request_as_sent(request.id, response)
        self.persist()

    def sync(self) -> SyncResult:
        result = self.machine.receive_sync(self.server.sync_body(self.key))
        self.persist()
        return result

    def tick(self) -> SyncResult:
        """Sync, then send whatever the sync made necessary."""
        result = self.sync()
        self.flush()
        return result

    def share(self, room_id: str) -> list[OutgoingRequest]:
        """Run ``share_room_key`` to completion; returns the to-device requests sent."""
        members = [u for u, m in self.server.rooms[room_id].members.items()
                   if m in ("join", "invite")]
        sent: list[OutgoingRequest] = []
        for _ in range(10):
            requests = self.machine.share_room_key(room_id, members)
            self.persist()
            for request in requests:
                self.answer(request)
            if all(r.kind is RequestKind.TO_DEVICE for r in requests):
                sent.extend(requests)
                return sent
        raise AssertionError("share_room_key never settles")

    def send(self, room_id: str, body: str, **extra: Any) -> dict[str, Any]:
        self.share(room_id)
        content = {"msgtype": "m.text", "body": body, **extra}
        encrypted = self.machine.encrypt(room_id, "m.room.message", content)
        self.persist()
        return self.server.post_event(room_id, self.user_id, encrypted)

    def decrypt(self, room_id: str, event: dict[str, Any]) -> Decrypted | DecryptionFailure:
        result = self.machine.decrypt_room_event(room_id, event)
        self.persist()
        return result

    def read(self, room_id: str, event: dict[str, Any]) -> str:
        """Decrypt and return the body; fails the test with the reason otherwise."""
        result = self.decrypt(room_id, event)
        assert isinstance(result, Decrypted), result
        return str(result.event["content"]["body"])


def make_clients(*names: str, clock: ManualClock | None = None) -> tuple[FakeServer, list[Client]]:
    """A server and one logged-in client per ``user`` or ``user/DEVICE`` name, keys uploaded."""
    server = FakeServer(clock or ManualClock())
    clients = []
    for name in names:
        user, _, device = name.partition("/")
        clients.append(Client(server, f"@{user}:test", device or f"{user.upper()}DEV"))
    for client in clients:
        client.flush()
    for client in clients:
        client.tick()
    return server, clients


def make_room(
    room_id: str, *names: str, clock: ManualClock | None = None
) -> tuple[FakeServer, list[Client]]:
    """`make_clients`, then `room_id` created by the first client with all the others in it;
    every client has seen the room (one tick each)."""
    server, clients = make_clients(*names, clock=clock)
    server.create_room(room_id, clients[0].user_id, [c.user_id for c in clients[1:]])
    for client in clients:
        client.tick()
    return server, clients


PICKLE_KEY = b"\x07" * 32


def _copy_vz(obj: Any) -> Any:
    """An independent copy of a vodozemac object, through its own pickle format."""
    return type(obj).from_pickle(obj.pickle(PICKLE_KEY), PICKLE_KEY)


class FoldingStore:
    """A minimal in-memory store: applies ``Changes`` like a real store would (copies, upserts,
    the better-copy rule for inbound sessions) and builds an ``EngineSnapshot`` back."""

    def __init__(self) -> None:
        self.account: Any = None
        self.tables: dict[str, dict[Any, Any]] = {
            name: {} for name in ("olm", "igs", "ogs", "dev", "user", "room", "replay",
                                  "withheld", "req", "xsign", "identity", "backup")
        }
        self.hashes: list[str] = []

    def save(self, changes: Any) -> None:
        t = self.tables
        if changes.account is not None:
            self.account = replace(changes.account, account=_copy_vz(changes.account.account))
        for r in changes.olm_sessions:
            t["olm"][r.session_id] = replace(r, session=_copy_vz(r.session))
        for session_id in changes.olm_sessions_removed:
            t["olm"].pop(session_id, None)
        for r in changes.inbound_group_sessions:
            old = t["igs"].get((r.room_id, r.session_id))
            if old is None or r.first_known_index < old.first_known_index:
                t["igs"][(r.room_id, r.session_id)] = replace(r, session=_copy_vz(r.session))
        for r in changes.outbound_group_sessions:
            t["ogs"][r.room_id] = replace(
                r, session=_copy_vz(r.session), shared_with=copy.deepcopy(r.shared_with),
                pending_requests=set(r.pending_requests),
            )
        for room_id in changes.outbound_group_sessions_removed:
            t["ogs"].pop(room_id, None)
        for r in changes.devices:
            t["dev"][(r.user_id, r.device_id)] = replace(r, keys=copy.deepcopy(r.keys))
        for r in changes.tracked_users:
            if r.tracked:
                t["user"][r.user_id] = replace(r)
            else:
                t["user"].pop(r.user_id, None)
        for r in changes.rooms:
            t["room"][r.room_id] = replace(r, members=dict(r.members),
                                           encryption=copy.deepcopy(r.encryption))
        for r in changes.replay_entries:
            t["replay"][(r.session_id, r.message_index)] = r
        for r in changes.withheld:
            t["withheld"][(r.room_id, r.session_id)] = r
        for key in changes.withheld_removed:
            t["withheld"].pop(key, None)
        for req in changes.requests_added:
            t["req"][req.id] = req
        for req_id in changes.requests_removed:
            t["req"].pop(req_id, None)
        self.hashes.extend(changes.to_device_hashes)
        for r in changes.cross_signing:
            t["xsign"][()] = replace(r)
        for r in changes.identities:
            t["identity"][r.user_id] = replace(r, keys=copy.deepcopy(r.keys))
        for r in changes.backup:
            t["backup"][()] = replace(r, auth_data=copy.deepcopy(r.auth_data))

    def inbound(self, keys: list[Any]) -> tuple[list[Any], list[Any]]:
        records = [_copy_record(self.tables["igs"][k]) for k in keys if k in self.tables["igs"]]
        wanted = {k[1] for k in keys}
        replay = [r for r in self.tables["replay"].values() if r.session_id in wanted]
        return records, replay

    def snapshot(self, *, with_inbound: bool = True) -> EngineSnapshot:
        t = self.tables
        copied = _copy_all(t)
        return EngineSnapshot(
            account=replace(self.account, account=_copy_vz(self.account.account)),
            olm_sessions=copied["olm"], outbound_group_sessions=copied["ogs"],
            devices=[replace(d, keys=copy.deepcopy(d.keys)) for d in t["dev"].values()],
            tracked_users=[replace(u) for u in t["user"].values()],
            rooms=[replace(r, members=dict(r.members)) for r in t["room"].values()],
            withheld=list(t["withheld"].values()), pending_requests=list(t["req"].values()),
            to_device_hashes=list(self.hashes),
            inbound_group_sessions=copied["igs"] if with_inbound else [],
            replay_entries=list(t["replay"].values()) if with_inbound else [],
            cross_signing=[replace(r) for r in t["xsign"].values()],
            identities=[replace(r, keys=copy.deepcopy(r.keys)) for r in t["identity"].values()],
            backup=[replace(r) for r in t["backup"].values()],
        )


def _copy_record(record: Any) -> Any:
    return replace(record, session=_copy_vz(record.session))


def _copy_all(tables: dict[str, dict[Any, Any]]) -> dict[str, list[Any]]:
    result = {name: [_copy_record(r) for r in tables[name].values()]
              for name in ("olm", "igs")}
    result["ogs"] = [
        replace(r, session=_copy_vz(r.session), shared_with=copy.deepcopy(r.shared_with),
                pending_requests=set(r.pending_requests))
        for r in tables["ogs"].values()
    ]
    return result
