"""The moving parts of the crash loop (bench/chaos.py): the plain client's sender and its /sync
loop through the proxy, the peers that read along (and send now and then) against Synapse
directly, and the killer that SIGKILLs the proxy child at chosen moments and restarts it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import ProxyProcess
from tests.support.js_peer import JsPeer
from tests.support.nio_peer import NioPeer, PeerError
from tests.support.plain_client import PlainClient, RequestFailed

# A send is retried (same txn id) for this long before it counts as given up.
GIVE_UP_S = 180.0
FIRST_RETRY_S = 0.1
MAX_RETRY_S = 1.0
# The plain client's /sync: long-polls, and a timeline limit no burst between two syncs reaches.
SYNC_TIMEOUT_MS = 5_000
SYNC_FILTER = {"room": {"timeline": {"limit": 400}}}
TRANSIENT = (aiohttp.ClientError, TimeoutError, ConnectionError)


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


@dataclass
class Sender:
    """The plain client sending `count` messages in order, each retried with the SAME txn id
    until the proxy answers 200 (a real client does so when an answer is lost)."""

    client: PlainClient
    room_id: str
    count: int
    run_id: str
    acked: dict[int, str] = field(default_factory=dict)  # message number -> event id
    gave_up: dict[int, str] = field(default_factory=dict)  # message number -> last error
    retries: Counter[str] = field(default_factory=Counter)  # why attempts failed
    current: int = -1
    last_ack: float = 0.0
    began: float | None = None  # when the attempt in flight started (None: none in flight)
    first_try_s: dict[int, float] = field(default_factory=dict)  # answered at the 1st attempt
    attempt: asyncio.Event = field(default_factory=asyncio.Event)  # set as any attempt starts
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def body(self, number: int) -> str:
        return f"chaos {self.run_id} #{number}"

    async def run(self, on_sent: Any = None) -> None:
        try:
            for number in range(self.count):
                self.current = number
                await self._send(number)
                if on_sent is not None:
                    on_sent(number)
        finally:
            self.done.set()

    async def _send(self, number: int) -> None:
        txn = f"chaos-{self.run_id}-{number}"
        deadline = time.monotonic() + GIVE_UP_S
        delay = FIRST_RETRY_S
        while True:
            self.attempt.set()
            self.began = began = time.monotonic()
            try:
                status, data = await self.client.send_raw(
                    self.room_id, text(self.body(number)), txn=txn
                )
            except TRANSIENT as exc:
                status, data = 0, type(exc).__name__
            finally:
                self.began = None
            if status == 200 and isinstance(data, dict) and isinstance(data.get("event_id"), str):
                self.acked[number] = data["event_id"]
                self.last_ack = time.monotonic()
                if delay == FIRST_RETRY_S:
                    self.first_try_s[number] = self.last_ack - began
                return
            why = f"{status} {data.get('errcode') if isinstance(data, dict) else data}"
            self.retries[why] += 1
            if time.monotonic() > deadline:
                self.gave_up[number] = why
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def reached(self, number: int) -> None:
        while self.current < number and not self.done.is_set():
            await asyncio.sleep(0.002)

    async def next_attempt(self) -> None:
        """Until the sender starts its next attempt (of a new message or a retry)."""
        self.attempt.clear()
        while not self.attempt.is_set() and not self.done.is_set():
            await asyncio.sleep(0.002)


async def sync_loop(client: PlainClient, stop: asyncio.Event, errors: Counter[str]) -> None:
    """The plain client's /sync through the proxy: a long-poll always in flight (so every kill
    is also mid-sync); a failed one is asked again with the same `since`."""
    while not stop.is_set():
        try:
            await client.sync(timeout_ms=SYNC_TIMEOUT_MS, filter_=SYNC_FILTER)
        except RequestFailed as exc:
            errors[f"{exc.status}"] += 1
            await asyncio.sleep(0.2)
        except TRANSIENT as exc:
            errors[type(exc).__name__] += 1
            await asyncio.sleep(0.2)


@dataclass
class Peers:
    """bob (matrix-nio) and carol (the js Rust-crypto peer) read along against Synapse directly,
    and send a message when asked; dave (nio) leaves and rejoins to force new key shares."""

    nio: NioPeer
    js: JsPeer
    dave: NioPeer
    room_id: str
    sent: dict[str, str] = field(default_factory=dict)  # body -> event id
    errors: Counter[str] = field(default_factory=Counter)
    dave_joined: bool = True
    _queue: asyncio.Queue[tuple[str, asyncio.Future[str]]] = field(
        default_factory=asyncio.Queue)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def send(self, which: str) -> str:
        """A message from `which` ("nio" or "js"); its body."""
        body = f"{which} peer #{next(self._numbers)}"
        if which == "js":
            self.sent[body] = await self.js.send_text(self.room_id, body)
            return body
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self._queue.put((body, future))
        self.sent[body] = await future
        return body

    async def nio_loop(self, stop: asyncio.Event) -> None:
        """bob's one task: every sync and send of his goes through here (nio is not safe to
        drive from two tasks at once)."""
        while not stop.is_set() or not self._queue.empty():
            try:
                await self.nio.sync_once(timeout_ms=300)
                while not self._queue.empty():
                    body, future = self._queue.get_nowait()
                    try:
                        future.set_result(await self.nio.send_text(self.room_id, body))
                    except PeerError as exc:
                        future.set_exception(exc)
            except PeerError as exc:
                self.errors[str(exc)[:60]] += 1
                await asyncio.sleep(0.2)

    async def toggle_dave(self, plain: PlainClient) -> str:
        """dave leaves, or is invited (by the plain client, through the proxy) and joins: either
        way the proxy's next send must share a room key anew. Returns the new membership."""
        if self.dave_joined:
            await self.dave.leave(self.room_id)
            self.dave_joined = False
        else:
            await retry(lambda: plain.invite(self.room_id, self.dave.user_id))
            from nio import JoinResponse

            answer = await self.dave.client.join(self.room_id)
            if not isinstance(answer, JoinResponse):
                raise PeerError(f"dave could not join: {answer!r}")
            self.dave_joined = True
        with contextlib.suppress(PeerError):
            await self.dave.sync_once(timeout_ms=0)  # keeps his one-time keys topped up
        return "join" if self.dave_joined else "leave"


async def retry(call: Any, give_up_s: float = GIVE_UP_S) -> Any:
    """A request through the proxy, asked again while the proxy is down or restarting."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            return await call()
        except (RequestFailed, *TRANSIENT):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@dataclass
class Crash:
    kind: str
    message: int  # the message being sent when the proxy was killed
    in_flight_ms: float | None  # how long the send in flight had been going (None: none was)
    restart_s: float  # spawn to first answer
    recovered_s: float | None = None  # kill to the next acknowledged send


KINDS = ("send", "rotation", "share", "peer", "random")


@dataclass
class Killer:
    """SIGKILLs the proxy `kills` times, spread over the run, each at a moment of one kind:
    send (just after a send started: share, encrypt or PUT in flight), rotation (the send that
    starts a new Megolm session), share (the send after dave's membership changed, which shares
    a key anew), peer (just after a peer sent: the proxy's sync takes in its event and maybe
    its new room key), random (any time). Restarts it on the same data dir and port at once."""

    proxy: ProxyProcess
    sender: Sender
    peers: Peers
    plain: PlainClient
    kills: int
    rotation: int
    rng: random.Random
    crashes: list[Crash] = field(default_factory=list)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)

    def plan(self) -> list[tuple[int, str]]:
        span = self.sender.count / (self.kills + 1)
        return [(max(1, int(span * (k + 1) + self.rng.uniform(-span / 3, span / 3))),
                 KINDS[k % len(KINDS)]) for k in range(self.kills)]

    async def run(self) -> None:
        for number, kind in self.plan():
            await self.sender.reached(number)
            # Each kill hits a proxy that works again: one send acknowledged since the last.
            while self.crashes and self.crashes[-1].recovered_s is None:
                if self.sender.done.is_set():
                    return
                await asyncio.sleep(0.01)
            if self.sender.done.is_set():
                return
            await self._moment(kind)
            await self._crash(kind)

    async def _moment(self, kind: str) -> None:
        rng = self.rng
        if kind == "send":
            await self.sender.next_attempt()
            await asyncio.sleep(rng.uniform(0, 0.04))
        elif kind == "rotation":
            # The send after every `rotation` of ours starts a new session and shares it.
            await self.sender.reached((self.sender.current // self.rotation + 1) * self.rotation)
            await asyncio.sleep(rng.uniform(0, 0.03))
        elif kind == "share":
            membership = await self.peers.toggle_dave(self.plain)
            await self._proxy_saw(membership)
            await self.sender.next_attempt()
            await asyncio.sleep(rng.uniform(0, 0.03))
        elif kind == "peer":
            await self.peers.send(rng.choice(("nio", "js")))
            await asyncio.sleep(rng.uniform(0, 0.3))
        else:
            await asyncio.sleep(rng.uniform(0, 1.5))

    async def _proxy_saw(self, membership: str, deadline_s: float = 10.0) -> None:
        """Until the plain client's /sync (through the proxy) shows dave's new membership."""
        dave, room_id = self.peers.dave.user_id, self.peers.room_id
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for event in reversed(self.plain.timeline(room_id)):
                if event.get("type") == "m.room.member" and event.get("state_key") == dave:
                    if event.get("content", {}).get("membership") == membership:
                        return
                    break
            await asyncio.sleep(0.05)

    async def _crash(self, kind: str) -> None:
        killed_at, began = time.monotonic(), self.sender.began
        message = self.sender.current
        self.proxy.kill()
        in_flight = None if began is None else (killed_at - began) * 1000
        crash = Crash(kind, message, in_flight, await self.proxy.start(timeout=60))
        self.crashes.append(crash)
        self._watchers.append(asyncio.create_task(self._recovery(crash, killed_at)))

    async def _recovery(self, crash: Crash, killed_at: float) -> None:
        while self.sender.last_ack <= killed_at and not self.sender.done.is_set():
            await asyncio.sleep(0.02)
        if self.sender.last_ack > killed_at:
            crash.recovered_s = self.sender.last_ack - killed_at
