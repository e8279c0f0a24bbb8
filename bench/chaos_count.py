"""Reading the crash loop's room back and counting (bench/chaos.py): the raw history straight
from Synapse, and what the plain client (through the proxy), matrix-nio and the js peer each
decrypt of it, after a grace period in which the peers keep syncing and try again."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos_load import retry
from tests.support.js_peer import JsPeer
from tests.support.nio_peer import NioPeer
from tests.support.plain_client import V3, PlainClient, q
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

PAGE = 200
GRACE_S = 60.0
RETRY_EVERY_S = 5.0

JsonDict = dict[str, Any]


@dataclass
class Reading:
    """One reader's view of the room: event id -> decrypted body, and the encrypted events it
    could not decrypt."""

    bodies: dict[str, str] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


async def raw_history(synapse: SynapseServer, token: str, room_id: str) -> list[JsonDict]:
    """Every event of the room as Synapse stores it, oldest first (read directly)."""
    events: list[JsonDict] = []
    start: str | None = None
    path = f"{V3}/rooms/{q(room_id)}/messages"
    while True:
        params = {"dir": "b", "limit": str(PAGE), **({"from": start} if start else {})}
        page = await synapse.client_request("GET", path, token, params=params)
        events.extend(page.get("chunk", []))
        start = page.get("end")
        if not page.get("chunk") or not start:
            return events[::-1]


def plaintext_events(raw: list[JsonDict]) -> list[str]:
    """Ids of events the server holds with anything readable (assert_ciphertext_only's rule,
    event by event, so that every offender counts)."""
    leaked = []
    for event in raw:
        try:
            assert_ciphertext_only([event])
        except AssertionError:
            leaked.append(str(event.get("event_id")))
    return leaked


def encrypted_ids(raw: list[JsonDict]) -> list[str]:
    return [e["event_id"] for e in raw if e.get("type") == "m.room.encrypted"]


async def _with_grace(read: Callable[[], Awaitable[Reading]], wanted: list[str],
                      between: Callable[[], Awaitable[None]]) -> tuple[Reading, int]:
    """Read until every wanted event decrypts or GRACE_S passes; returns the last reading and
    how many failed at the first one."""
    reading = await read()
    first = len(set(wanted) - set(reading.bodies))
    end = time.monotonic() + GRACE_S
    while set(wanted) - set(reading.bodies) and time.monotonic() < end:
        await between()
        reading = await read()
    return reading, first


async def plain_reading(plain: PlainClient, room_id: str, wanted: list[str]
                        ) -> tuple[Reading, int]:
    """The plain client's /messages through the proxy, page by page."""

    async def read() -> Reading:
        reading = Reading()
        start: str | None = None
        path = f"{V3}/rooms/{q(room_id)}/messages"
        while True:
            params = {"dir": "b", "limit": str(PAGE), **({"from": start} if start else {})}
            page = await retry(lambda p=params: plain.call("GET", path, params=p))
            for event in page.get("chunk", []):
                _note_plain(reading, event)
            start = page.get("end")
            if not page.get("chunk") or not start:
                return reading

    return await _with_grace(read, wanted, lambda: asyncio.sleep(RETRY_EVERY_S))


def _note_plain(reading: Reading, event: JsonDict) -> None:
    content = event.get("content", {})
    if content.get("org.e2eproxy.undecryptable") or event.get("type") == "m.room.encrypted":
        reading.failed.add(event["event_id"])
    elif event.get("type") == "m.room.message" and isinstance(content.get("body"), str):
        reading.bodies[event["event_id"]] = content["body"]


async def nio_reading(nio: NioPeer, room_id: str, wanted: list[str]) -> tuple[Reading, int]:
    """matrix-nio's own /messages, each event decrypted by nio; between tries it syncs (keys
    that were late arrive as to-device events)."""
    from nio import MegolmEvent, MessageDirection, RoomMessagesResponse

    async def read() -> Reading:
        reading = Reading()
        start = str(nio.client.next_batch)
        while True:
            page = await nio.client.room_messages(room_id, start, limit=PAGE,
                                                  direction=MessageDirection.back)
            assert isinstance(page, RoomMessagesResponse), page
            for event in page.chunk:
                if isinstance(event, MegolmEvent):
                    reading.failed.add(event.event_id)
                elif getattr(event, "decrypted", False) and isinstance(
                        getattr(event, "body", None), str):
                    reading.bodies[event.event_id] = event.body
            if not page.chunk or not page.end:
                return reading
            start = page.end

    async def between() -> None:
        end = time.monotonic() + RETRY_EVERY_S
        while time.monotonic() < end:
            await nio.sync_once(timeout_ms=500)

    return await _with_grace(read, wanted, between)


async def js_reading(js: JsPeer, room_id: str, wanted: list[str]) -> tuple[Reading, int]:
    """The js peer's /messages, each event decrypted by matrix-sdk-crypto (it keeps syncing
    on its own between tries)."""

    async def read() -> Reading:
        reading = Reading()
        for event in await js.history(room_id, page=PAGE):
            if not event.encrypted:
                continue
            if event.decryption_failure is not None or not isinstance(event.body, str):
                reading.failed.add(event.event_id)
            else:
                reading.bodies[event.event_id] = event.body
        return reading

    return await _with_grace(read, wanted, lambda: asyncio.sleep(RETRY_EVERY_S))


@dataclass
class Figures:
    lost: list[int]  # acknowledged messages not on the server as sent
    duplicates: int  # extra server events carrying a body already there
    plaintext: list[str]
    undecryptable: dict[str, list[str]]  # reader -> encrypted event ids it could not read


def count(acked: dict[int, str], body_of: Callable[[int], str], peer_sent: dict[str, str],
          raw: list[JsonDict], readings: dict[str, Reading]) -> Figures:
    on_server = {e["event_id"] for e in raw}
    encrypted = encrypted_ids(raw)
    # Every body any reader decrypted, with the events that carry it.
    carriers: dict[str, set[str]] = defaultdict(set)
    decrypted: dict[str, str] = {}
    for reading in readings.values():
        for event_id, body in reading.bodies.items():
            carriers[body].add(event_id)
            decrypted.setdefault(event_id, body)
    lost = [n for n, event_id in acked.items()
            if event_id not in on_server or decrypted.get(event_id, body_of(n)) != body_of(n)]
    lost += [-1 for event_id in peer_sent.values() if event_id not in on_server]
    duplicates = sum(len(ids) - 1 for ids in carriers.values() if len(ids) > 1)
    undecryptable = {name: [e for e in encrypted if e not in reading.bodies]
                     for name, reading in readings.items()}
    return Figures(lost, duplicates, plaintext_events(raw), undecryptable)
