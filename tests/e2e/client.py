"""A plain Matrix client for the e2e tier: bare aiohttp requests, no E2EE, no SDK."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import quote

import aiohttp

_txn = itertools.count(1)


class MatrixError(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body


class PlainClient:
    """Talks the client-server API to `base_url` (the proxy, in the pass-through tests)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.access_token: str | None = None
        self.user_id: str | None = None
        self.device_id: str | None = None
        self.next_batch: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect: int = 200,
    ) -> Any:
        async with self.session.request(
            method, self.base_url + path, json=body, params=params, headers=self._headers()
        ) as response:
            text = await response.text()
            if response.status != expect:
                raise MatrixError(method, path, response.status, text)
            return json.loads(text)

    async def login(self, user: str, password: str) -> dict[str, Any]:
        answer = await self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
                "initial_device_display_name": "e2e plain client",
            },
        )
        self.access_token = answer["access_token"]
        self.user_id = answer["user_id"]
        self.device_id = answer["device_id"]
        return dict(answer)

    async def whoami(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/_matrix/client/v3/account/whoami"))

    async def create_room(self, **body: Any) -> str:
        answer = await self.request("POST", "/_matrix/client/v3/createRoom", body)
        return str(answer["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request(
            "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", {"user_id": user_id}
        )

    async def join(self, room_id: str) -> str:
        answer = await self.request("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {})
        return str(answer["room_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/e2e{next(_txn)}"
        answer = await self.request("PUT", path, {"msgtype": "m.text", "body": body})
        return str(answer["event_id"])

    async def sync(self, timeout_ms: int = 0) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms)}
        if self.next_batch is not None:
            params["since"] = self.next_batch
        answer = await self.request("GET", "/_matrix/client/v3/sync", params=params)
        self.next_batch = answer["next_batch"]
        return dict(answer)

    async def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        answer = await self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/messages",
            params={"dir": "b", "limit": str(limit)},
        )
        return list(answer["chunk"])


def timeline_bodies(sync: dict[str, Any], room_id: str, section: str = "join") -> list[str]:
    """The `m.room.message` bodies of one room's timeline in a sync answer, oldest first."""
    room = sync.get("rooms", {}).get(section, {}).get(room_id, {})
    return [
        event["content"]["body"]
        for event in room.get("timeline", {}).get("events", [])
        if event.get("type") == "m.room.message"
    ]
