"""A real third-party E2EE peer for the e2e tier: matrix-nio (vodozemac crypto) talking to Synapse.

`NioPeer` wraps one `nio.AsyncClient` with encryption on and an on-disk store in a directory of
its own. It logs in against Synapse **directly** (never through the proxy), so what it sees is what
any independent E2EE client would see. It trusts every device blindly (keys go to unverified
devices too), which is how a user who never verifies would behave.

Every wait is a deadline loop of short long-polls (`POLL_MS`), never a fixed sleep:

    peer = await NioPeer.login(synapse.base_url, user.user_id, user.password, tmp_path / "bob")
    room_id = await peer.create_encrypted_room(invite=[alice_id])
    event_id = await peer.send_text(room_id, "hello")
    seen = await peer.wait_for_bodies(room_id, ["hi back"])
    assert peer.undecryptable(room_id) == []
    await peer.close()

After every sync the peer records each timeline event of its joined rooms as a `SeenEvent`:
decrypted Megolm events with `encrypted=True` (their `type` and `content` are the decrypted ones),
events that arrived in the clear with `encrypted=False`. Megolm events it cannot decrypt yet are
kept aside and retried after each later sync (a room key may arrive after the event); those still
pending are what `undecryptable()` reports.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinResponse,
    KeysQueryResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomSendResponse,
    SyncResponse,
)
from nio.api import Api
from nio.crypto import OlmDevice
from nio.exceptions import EncryptionError

from tests.support.wire import encryption_state

# One long-poll inside a deadline loop: short, so a loop never overshoots its deadline by much.
POLL_MS = 300
DEFAULT_TIMEOUT = 15.0
# Enough that a burst between two syncs never makes a timeline `limited` (with a gap).
_SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}


class PeerError(AssertionError):
    """A request of the peer failed, or a wait ran past its deadline."""


@dataclass(frozen=True)
class SeenEvent:
    """One timeline event the peer saw in a room (decrypted when it came encrypted)."""

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    encrypted: bool
    session_id: str | None = None

    @property
    def body(self) -> str | None:
        body = self.content.get("body")
        return body if isinstance(body, str) else None


@dataclass
class _RoomLog:
    events: list[SeenEvent] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    pending: dict[str, MegolmEvent] = field(default_factory=dict)


def _check(response: Any, expected: type, what: str) -> Any:
    if not isinstance(response, expected):
        raise PeerError(f"{what} failed: {response!r}")
    return response


class NioPeer:
    """One matrix-nio E2EE device logged in against the homeserver directly; see module doc."""

    def __init__(self, client: AsyncClient, store_dir: Path) -> None:
        self.client = client
        self.store_dir = store_dir
        self._rooms: dict[str, _RoomLog] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    async def login(
        cls,
        homeserver: str,
        user_id: str,
        password: str,
        store_dir: Path,
        device_name: str = "nio e2e peer",
    ) -> NioPeer:
        """Log in with a password (a new device), upload device and one-time keys, first sync."""
        store_dir.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = AsyncClient(homeserver, user_id, store_path=str(store_dir), config=config)
        peer = cls(client, store_dir)
        try:
            _check(await client.login(password, device_name=device_name), LoginResponse, "login")
            assert client.olm is not None, "nio has no Olm machine: is the e2e extra installed?"
            await peer._maintain_keys()
            await peer.sync_once(timeout_ms=0)
        except BaseException:
            await client.close()
            raise
        return peer

    async def close(self) -> None:
        await self.client.close()

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @property
    def access_token(self) -> str:
        return str(self.client.access_token)

    # -- syncing -------------------------------------------------------------------------------

    async def _maintain_keys(self) -> None:
        """What nio's sync_forever does between syncs: to-device, key upload, query, claim."""
        client = self.client
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())

    async def sync_once(self, timeout_ms: int = POLL_MS) -> SyncResponse:
        """One sync (long-polling up to `timeout_ms`), then key upkeep and event recording."""
        response = _check(
            await self.client.sync(timeout=timeout_ms, sync_filter=_SYNC_FILTER),
            SyncResponse,
            "sync",
        )
        self._record(response)
        await self._maintain_keys()
        self._retry_pending()
        return response

    async def sync_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "condition",
    ) -> None:
        """Sync until `predicate()` holds (checked before every poll); fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"{self.user_id}: {what} not met within {timeout:.1f} s")
            await self.sync_once(timeout_ms=max(1, min(POLL_MS, int(left * 1000))))

    def _log(self, room_id: str) -> _RoomLog:
        return self._rooms.setdefault(room_id, _RoomLog())

    def _record(self, response: SyncResponse) -> None:
        for room_id, info in response.rooms.join.items():
            log = self._log(room_id)
            for event in info.timeline.events:
                event_id = getattr(event, "event_id", None)
                if not event_id or event_id in log.ids:
                    continue
                if isinstance(event, MegolmEvent):
                    log.pending[event_id] = event
                else:
                    self._add(log, room_id, event)

    def _add(self, log: _RoomLog, room_id: str, event: Any) -> None:
        source = getattr(event, "source", None) or {}
        if "type" not in source:
            return
        log.ids.add(event.event_id)
        log.pending.pop(event.event_id, None)
        log.events.append(
            SeenEvent(
                room_id=room_id,
                event_id=event.event_id,
                sender=event.sender,
                type=source["type"],
                content=dict(source.get("content") or {}),
                encrypted=bool(getattr(event, "decrypted", False)),
                session_id=getattr(event, "session_id", None),
            )
        )

    def _retry_pending(self) -> None:
        for room_id, log in self._rooms.items():
            for event in list(log.pending.values()):
                event.room_id = room_id
                try:
                    decrypted: Event | Any = self.client.decrypt_event(event)
                except EncryptionError:
                    continue
                if getattr(decrypted, "decrypted", False):
                    self._add(log, room_id, decrypted)

    # -- what the peer saw ---------------------------------------------------------------------

    def events(self, room_id: str, type: str | None = None) -> list[SeenEvent]:
        """Events seen in the room, in arrival order (decrypted ones by their decrypted type)."""
        log = self._rooms.get(room_id)
        seen = log.events if log else []
        return [e for e in seen if type is None or e.type == type]

    def messages(self, room_id: str) -> list[SeenEvent]:
        return self.events(room_id, "m.room.message")

    def bodies(self, room_id: str) -> list[str]:
        return [e.body for e in self.messages(room_id) if e.body is not None]

    def event(self, room_id: str, event_id: str) -> SeenEvent | None:
        return next((e for e in self.events(room_id) if e.event_id == event_id), None)

    def undecryptable(self, room_id: str) -> list[MegolmEvent]:
        """Megolm events of the room the peer has not been able to decrypt (so far)."""
        log = self._rooms.get(room_id)
        return list(log.pending.values()) if log else []

    def has_room_key(self, room_id: str, session_id: str) -> bool:
        """Whether the peer holds the inbound Megolm session (by any route: share, forward)."""
        olm = self.client.olm
        assert olm is not None
        return any(s.room_id == room_id and s.id == session_id for s in olm.inbound_group_store)

    async def wait_for_bodies(
        self, room_id: str, bodies: Sequence[str], timeout: float = DEFAULT_TIMEOUT
    ) -> list[SeenEvent]:
        """Sync until every body was seen as a message; returns those messages."""
        wanted = list(bodies)

        def done() -> bool:
            return all(b in self.bodies(room_id) for b in wanted)

        try:
            await self.sync_until(done, timeout, f"messages {wanted!r} in {room_id}")
        except PeerError as exc:
            raise PeerError(
                f"{exc}; saw {self.bodies(room_id)!r}, "
                f"undecryptable {[e.event_id for e in self.undecryptable(room_id)]!r}"
            ) from None
        return [m for m in self.messages(room_id) if m.body in wanted]

    async def wait_for_event(
        self, room_id: str, event_id: str, timeout: float = DEFAULT_TIMEOUT
    ) -> SeenEvent:
        """Sync until the event was seen (decrypted, if it came encrypted)."""
        try:
            await self.sync_until(
                lambda: self.event(room_id, event_id) is not None, timeout, f"event {event_id}"
            )
        except PeerError as exc:
            pending = [e.event_id for e in self.undecryptable(room_id)]
            raise PeerError(f"{exc}; undecryptable: {pending!r}") from None
        seen = self.event(room_id, event_id)
        assert seen is not None
        return seen

    # -- rooms ---------------------------------------------------------------------------------

    async def create_encrypted_room(
        self,
        invite: Sequence[str] = (),
        name: str | None = None,
        rotation_period_msgs: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """Create a private room, encrypted from its creation; return once nio knows it so."""
        response = _check(
            await self.client.room_create(
                name=name,
                invite=list(invite),
                initial_state=[encryption_state(rotation_period_msgs)],
            ),
            RoomCreateResponse,
            "createRoom",
        )
        room_id = str(response.room_id)
        await self.sync_until(
            lambda: room_id in self.client.rooms and self.client.rooms[room_id].encrypted,
            timeout,
            f"encrypted room {room_id} in sync",
        )
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        _check(await self.client.room_invite(room_id, user_id), RoomInviteResponse, "invite")

    async def join(self, room_id: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the invite, join, and sync until the room is joined (and known encrypted)."""
        await self.sync_until(
            lambda: room_id in self.client.invited_rooms or room_id in self.client.rooms,
            timeout,
            f"invite to {room_id}",
        )
        _check(await self.client.join(room_id), JoinResponse, "join")
        await self.sync_until(
            lambda: room_id in self.client.rooms and self.client.rooms[room_id].encrypted,
            timeout,
            f"joined encrypted room {room_id}",
        )

    async def leave(self, room_id: str) -> None:
        _check(await self.client.room_leave(room_id), RoomLeaveResponse, "leave")

    async def wait_for_member(
        self, room_id: str, user_id: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Sync until `user_id` is a joined member of the room in nio's view."""
        await self.sync_until(
            lambda: (
                room_id in self.client.rooms
                and user_id in self.client.rooms[room_id].users
                and user_id not in self.client.rooms[room_id].invited_users
            ),
            timeout,
            f"{user_id} joined {room_id}",
        )

    # -- sending -------------------------------------------------------------------------------

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str | None = None
    ) -> str:
        """Encrypt and send any room event (reactions too), sharing the room key with every
        device of every member, verified or not. Returns the event id."""
        client = self.client
        assert client.olm is not None
        await self.sync_once(timeout_ms=0)  # fresh membership and device lists first
        room = client.rooms[room_id]
        if not room.encrypted:
            raise PeerError(f"{room_id} is not encrypted in nio's view; refusing to send")
        if not room.members_synced:
            await client.joined_members(room_id)
        if client.should_query_keys:
            _check(await client.keys_query(), KeysQueryResponse, "keys/query")
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        encrypted_type, encrypted = client.encrypt(room_id, event_type, content)
        # nio's room_send leaves m.reaction in the clear (pre-MSC1849); encrypt and send ourselves.
        method, path, data = Api.room_send(
            client.access_token, room_id, encrypted_type, encrypted, txn_id or str(uuid.uuid4())
        )
        response = await client._send(RoomSendResponse, method, path, data, (room_id,))
        return str(_check(response, RoomSendResponse, f"send {event_type}").event_id)

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    # -- keys of others ------------------------------------------------------------------------

    async def query_devices(self, user_id: str) -> dict[str, OlmDevice]:
        """Query `user_id`'s device keys through nio (which drops devices whose self-signature
        does not verify); returns device_id -> OlmDevice."""
        olm = self.client.olm
        assert olm is not None
        olm.users_for_key_query.add(user_id)
        _check(await self.client.keys_query(), KeysQueryResponse, "keys/query")
        return {d.id: d for d in self.client.device_store.active_user_devices(user_id)}


# -- encrypted attachments (nio's own attachment crypto, raw media requests) ---------------------


async def upload_encrypted_file(
    peer: NioPeer, plaintext: bytes, homeserver: str
) -> tuple[dict[str, Any], bytes]:
    """Encrypt `plaintext` with nio's `encrypt_attachment`, upload the ciphertext to the
    homeserver directly as the peer; returns the spec `EncryptedFile` and the ciphertext."""
    import aiohttp
    from nio.crypto.attachments import encrypt_attachment

    ciphertext, keys = encrypt_attachment(plaintext)
    headers = {
        "Authorization": f"Bearer {peer.access_token}",
        "Content-Type": "application/octet-stream",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            homeserver.rstrip("/") + "/_matrix/media/v3/upload", data=ciphertext, headers=headers
        ) as response,
    ):
        body = await response.json(content_type=None)
        if response.status != 200:
            raise PeerError(f"upload failed: {response.status} {body}")
    file = {
        "url": body["content_uri"],
        "key": keys["key"],
        "iv": keys["iv"],
        "hashes": keys["hashes"],
        "v": keys.get("v", "v2"),
    }
    return file, ciphertext


async def download_media_raw(peer: NioPeer, mxc: str, homeserver: str) -> bytes:
    """The bytes the homeserver stores for `mxc`, fetched as the peer on the authenticated media
    API (never through a proxy)."""
    import aiohttp

    path = "/_matrix/client/v1/media/download/" + mxc.removeprefix("mxc://")
    headers = {"Authorization": f"Bearer {peer.access_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(homeserver.rstrip("/") + path, headers=headers) as response,
    ):
        data = await response.read()
        if response.status != 200:
            raise PeerError(f"download of {mxc} failed: {response.status} {data[:300]!r}")
        return data


def decrypt_file(file: dict[str, Any], ciphertext: bytes) -> bytes:
    """nio's own `decrypt_attachment` with an `EncryptedFile` (checks the sha256 first)."""
    from nio.crypto.attachments import decrypt_attachment

    return decrypt_attachment(ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"])


# The e2e tier's `nio_peers` fixture: `await nio_peers("bob")` is a logged-in peer.
PeerFactory = Callable[[str], Awaitable[NioPeer]]
