"""The one plain Matrix client of the tests (bare aiohttp, no E2EE, no SDK), for every tier.

It talks the client-server API over one aiohttp session to a base URL (the proxy, the stub or
Synapse directly) and keeps its own `since` token and every /sync body it got. `request` gives
(status, body) as answered; `call` fails with RequestFailed unless the status is the expected one.
Waits are deadline-bounded: `sync_until` polls with short server-side timeouts until a predicate
holds or the deadline passes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.wire import MEGOLM, encryption_state

V3 = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
_txn = itertools.count(1)

JsonDict = dict[str, Any]


class RequestFailed(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body


def q(value: str) -> str:
    return quote(value, safe="")


class PlainClient:
    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, access_token: str | None = None
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token
        self.user_id = ""
        self.device_id = ""
        self.next_batch: str | None = None
        # Every /sync body this client received, as the client saw it.
        self.sync_bodies: list[JsonDict] = []

    # -- raw requests ----------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        async with self.http.request(
            method, self.base_url + path, json=body, params=params, headers=headers
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect: int = 200,
    ) -> Any:
        """The answer's body; RequestFailed (with status and body) on any status but `expect`."""
        status, data = await self.request(method, path, body, params)
        if status != expect:
            raise RequestFailed(method, path, status, data)
        return data

    # -- account ---------------------------------------------------------------------------
    async def login(
        self, user: str, password: str = "pw", device_id: str | None = None
    ) -> JsonDict:
        body: JsonDict = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        }
        if device_id is not None:
            body["device_id"] = device_id
        answer: JsonDict = await self.call("POST", f"{V3}/login", body)
        self.access_token = answer["access_token"]
        self.user_id = answer["user_id"]
        self.device_id = answer["device_id"]
        return answer

    async def logout(self) -> None:
        await self.call("POST", f"{V3}/logout", {})

    async def whoami(self) -> JsonDict:
        answer: JsonDict = await self.call("GET", f"{V3}/account/whoami")
        return answer

    async def keys_query(self, user_id: str) -> JsonDict:
        answer: JsonDict = await self.call(
            "POST", f"{V3}/keys/query", {"device_keys": {user_id: []}}
        )
        return answer

    async def create_filter(self, definition: JsonDict) -> str:
        answer = await self.call("POST", f"{V3}/user/{q(self.user_id)}/filter", definition)
        return str(answer["filter_id"])

    # -- rooms -----------------------------------------------------------------------------
    async def create_room(self, **body: Any) -> str:
        answer = await self.call("POST", f"{V3}/createRoom", body)
        return str(answer["room_id"])

    async def create_encrypted_room(
        self, invite: list[str] | None = None, **encryption: Any
    ) -> str:
        return await self.create_room(
            invite=invite or [], initial_state=[encryption_state(**encryption)]
        )

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.call("POST", f"{V3}/rooms/{q(room_id)}/invite", {"user_id": user_id})

    async def join(self, room_id: str) -> str:
        """POST /rooms/{roomId}/join; the joined room's id."""
        answer = await self.call("POST", f"{V3}/rooms/{q(room_id)}/join", {})
        return str(answer["room_id"])

    async def join_by_id_or_alias(self, room: str) -> str:
        """POST /join/{roomIdOrAlias}, the other form (the proxy passes it through as it is);
        the joined room's id."""
        answer = await self.call("POST", f"{V3}/join/{q(room)}", {})
        return str(answer["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.call("POST", f"{V3}/rooms/{q(room_id)}/leave", {})

    def send_path(self, room_id: str, event_type: str, txn: str) -> str:
        return f"{V3}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn)}"

    async def send_raw(
        self,
        room_id: str,
        content: JsonDict,
        event_type: str = "m.room.message",
        txn: str | None = None,
    ) -> tuple[int, Any]:
        txn = txn or f"plain{next(_txn)}"
        return await self.request("PUT", self.send_path(room_id, event_type, txn), content)

    async def send(
        self,
        room_id: str,
        content: JsonDict,
        event_type: str = "m.room.message",
        txn: str | None = None,
    ) -> str:
        status, data = await self.send_raw(room_id, content, event_type, txn)
        if status != 200:
            raise RequestFailed("PUT", f"send into {room_id}", status, data)
        return str(data["event_id"])

    async def send_text(self, room_id: str, text: str, txn: str | None = None) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text}, txn=txn)

    # -- reading ---------------------------------------------------------------------------
    async def sync(
        self, timeout_ms: int = 0, filter_: str | JsonDict | None = None, since: bool = True
    ) -> JsonDict:
        params = {"timeout": str(timeout_ms)}
        if since and self.next_batch:
            params["since"] = self.next_batch
        if filter_ is not None:
            params["filter"] = (
                filter_ if isinstance(filter_, str) else json.dumps(filter_, separators=(",", ":"))
            )
        body: JsonDict = await self.call("GET", f"{V3}/sync", params=params)
        self.next_batch = body["next_batch"]
        self.sync_bodies.append(body)
        return body

    async def sync_until(
        self,
        predicate: Callable[[], bool],
        what: str,
        deadline_s: float = 8.0,
        filter_: str | JsonDict | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while not predicate():
            if loop.time() > end:
                raise AssertionError(f"{self.user_id}: timed out waiting for {what}")
            await self.sync(timeout_ms=300, filter_=filter_)

    def timeline(self, room_id: str, section: str = "join") -> list[JsonDict]:
        """Every timeline event of the room across all syncs so far, in order."""
        events: list[JsonDict] = []
        for body in self.sync_bodies:
            room = body.get("rooms", {}).get(section, {}).get(room_id, {})
            events.extend(room.get("timeline", {}).get("events", []))
        return events

    def synced_event(self, room_id: str, event_id: str) -> JsonDict | None:
        return next((e for e in self.timeline(room_id) if e.get("event_id") == event_id), None)

    async def wait_for_event(
        self, room_id: str, event_id: str, deadline_s: float = 8.0
    ) -> JsonDict:
        await self.sync_until(
            lambda: self.synced_event(room_id, event_id) is not None,
            f"{event_id} in {room_id}",
            deadline_s,
        )
        found = self.synced_event(room_id, event_id)
        assert found is not None
        return found

    def to_device_events(self) -> list[JsonDict]:
        return [e for b in self.sync_bodies for e in b.get("to_device", {}).get("events", [])]

    async def messages(
        self, room_id: str, limit: int = 50, dir_: str = "b", filter_: JsonDict | None = None
    ) -> list[JsonDict]:
        params = {"dir": dir_, "limit": str(limit)}
        if filter_ is not None:
            params["filter"] = json.dumps(filter_)
        body = await self.call("GET", f"{V3}/rooms/{q(room_id)}/messages", params=params)
        return list(body["chunk"])

    async def context(
        self, room_id: str, event_id: str, limit: int = 10, filter_: JsonDict | None = None
    ) -> JsonDict:
        params = {"limit": str(limit)}
        if filter_ is not None:
            params["filter"] = json.dumps(filter_)
        answer: JsonDict = await self.call(
            "GET", f"{V3}/rooms/{q(room_id)}/context/{q(event_id)}", params=params
        )
        return answer

    async def event(self, room_id: str, event_id: str) -> JsonDict:
        answer: JsonDict = await self.call("GET", f"{V3}/rooms/{q(room_id)}/event/{q(event_id)}")
        return answer

    async def relations(self, room_id: str, event_id: str, *narrow: str) -> list[JsonDict]:
        """`narrow`: the relation type, then optionally the event type."""
        path = f"{V1}/rooms/{q(room_id)}/relations/{q(event_id)}"
        body = await self.call("GET", "/".join([path, *(q(part) for part in narrow)]))
        return list(body["chunk"])


def timeline_bodies(sync: JsonDict, room_id: str, section: str = "join") -> list[str]:
    """The `m.room.message` bodies of one room's timeline in a sync answer, oldest first."""
    room = sync.get("rooms", {}).get(section, {}).get(room_id, {})
    return [
        event["content"]["body"]
        for event in room.get("timeline", {}).get("events", [])
        if event.get("type") == "m.room.message"
    ]


# -- the stub homeserver ---------------------------------------------------------------------
async def login_all(
    http: aiohttp.ClientSession, base_url: str, stub: Any, *names: str
) -> list[PlainClient]:
    """Register each name on the stub and log it in through `base_url`."""
    clients = []
    for name in names:
        stub.register(name, "pw")
        client = PlainClient(http, base_url)
        await client.login(name)
        clients.append(client)
    return clients


def direct(client: PlainClient, stub: Any) -> PlainClient:
    """The same user and token, talking to the stub directly (what the server would answer)."""
    assert stub.base_url is not None
    other = PlainClient(client.http, stub.base_url, client.access_token)
    other.user_id = client.user_id
    return other


def stub_media(stub: Any, mxc: str) -> Any:
    """The stub's stored item for `mxc` (its `content` is None while only reserved)."""
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return stub.media.items[(server, media_id)]


def forwarded(stub: Any, before: int, *fragments: str) -> list[str]:
    """Paths of the stub's requests since `before` that contain one of `fragments` (the proxy's
    own background sync and key traffic go on meanwhile)."""
    return [r.path for r in stub.requests[before:] if any(f in r.path for f in fragments)]


def to_device_recipients(requests: list[Any], since: int = 0) -> list[tuple[str, str]]:
    """(user, device) of every message in the stub's recorded /sendToDevice requests."""
    found: list[tuple[str, str]] = []
    for request in requests[since:]:
        if request.method != "PUT" or "/sendToDevice/" not in request.path:
            continue
        messages = (request.json or {}).get("messages", {})
        for user_id, devices in messages.items():
            found.extend((user_id, device_id) for device_id in devices)
    return found


def third_party_encrypted_event(stub: Any, room_id: str) -> str:
    """Carol, who never talked to the proxy, puts an event encrypted with a session nobody was
    given straight into the room on the stub; returns its event id (nobody can decrypt it)."""
    stub.register("carol", "pw")
    carol = stub.login("carol", "pw", device_id="CAROLDEV")
    room = stub.room(room_id)
    stub.room_ops.invite(room, room.members()[0], carol.user_id)
    stub.room_ops.join(room, carol.user_id)
    stored = stub.room_ops.send(
        room,
        carol.user_id,
        "m.room.encrypted",
        {
            "algorithm": MEGOLM,
            "sender_key": "Y2Fyb2wgc2VuZGVyIGtleSAzMiBieXRlcyBsb25nIQ",
            "device_id": carol.device_id,
            "session_id": "c2Vzc2lvbiBub2JvZHkgd2FzIGdpdmVu",
            "ciphertext": "QXdnQUVpQmxhaA",
        },
        carol.device_id,
        "carol-txn",
    )
    return str(stored.event_id)


async def encrypted_room_of(creator: PlainClient, *others: PlainClient, **encryption: Any) -> str:
    """An encrypted room created by `creator` through its base URL, every other client joined."""
    room_id = await creator.create_encrypted_room(invite=[c.user_id for c in others], **encryption)
    for other in others:
        await other.join(room_id)
    return room_id


# -- media through a base URL (the proxy, or the stub directly) ------------------------------
MEDIA_V3 = "/_matrix/media/v3"
# A stub download of an empty (reserved) item waits for its content: keep that wait short.
NO_WAIT = {"timeout_ms": "100"}


async def upload_media(
    client: PlainClient,
    data: bytes,
    content_type: str = "application/octet-stream",
    filename: str | None = None,
) -> str:
    """POST /_matrix/media/v3/upload as `client`; returns the content_uri (fails on non-200)."""
    headers = {"Content-Type": content_type}
    if client.access_token:
        headers["Authorization"] = f"Bearer {client.access_token}"
    params = {"filename": filename} if filename is not None else None
    async with client.http.post(
        client.base_url + f"{MEDIA_V3}/upload", data=data, params=params, headers=headers
    ) as response:
        text = await response.text()
        if response.status != 200:
            raise RequestFailed("POST", f"{MEDIA_V3}/upload", response.status, text)
        return str(json.loads(text)["content_uri"])


class MediaAnswer:
    """A media GET as the client got it: status, headers, raw body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def errcode(self) -> Any:
        data = self.json()
        return data.get("errcode") if isinstance(data, dict) else None

    def __repr__(self) -> str:
        shown = self.body[:200] if self.errcode is None else self.body
        return f"MediaAnswer({self.status}, {self.headers.get('Content-Type')!r}, {shown!r})"


def media_path(
    mxc: str, kind: str = "download", api: str = "v1", filename: str | None = None
) -> str:
    """The path of `mxc` on the authenticated media API (`api="v1"`) or the legacy one
    (`api="v3"` / `"r0"`); `kind` is download or thumbnail."""
    server_and_id = mxc.removeprefix("mxc://")
    base = "/_matrix/client/v1/media" if api == "v1" else f"/_matrix/media/{api}"
    path = f"{base}/{kind}/{server_and_id}"
    return path + f"/{q(filename)}" if filename else path


async def get_media(
    client: PlainClient,
    mxc: str,
    kind: str = "download",
    api: str = "v1",
    *,
    token: str | None = "header",
    filename: str | None = None,
    params: dict[str, str] | None = None,
    base_url: str | None = None,
) -> MediaAnswer:
    """GET `mxc` as `client` (token "header", "query" or None for no token at all), by default
    through the client's base URL; the body is read whole (for small test files)."""
    headers: dict[str, str] = {}
    query = dict(params or {})
    if token == "header" and client.access_token:
        headers["Authorization"] = f"Bearer {client.access_token}"
    elif token == "query" and client.access_token:
        query["access_token"] = client.access_token
    url = (base_url or client.base_url).rstrip("/") + media_path(mxc, kind, api, filename)
    async with client.http.get(url, headers=headers, params=query) as response:
        body = await response.read()
        return MediaAnswer(response.status, dict(response.headers), body)
