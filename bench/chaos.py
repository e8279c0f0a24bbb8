"""Workload chaos (issue 13): a crash loop on a real Synapse.

A plain client (alice, bare aiohttp, through the proxy child) sends N messages (default 1,000)
into an encrypted room whose Megolm session rotates every ROTATION messages. A matrix-nio peer
(bob) and the js Rust-crypto peer (carol, matrix-sdk-crypto as Element Web runs it) read along
against Synapse directly and send a message now and then; a third user (dave) leaves and rejoins,
so the proxy must share a room key anew. The plain client long-polls /sync through the proxy the
whole time and retries every send whose answer was lost with the SAME txn id, as real clients
do. Meanwhile the proxy is SIGKILLed K times (default 20) at chosen moments (bench/chaos_load.py
Killer: mid-send, mid-rotation, mid-share after a membership change, just after a peer sent,
random) and restarted at once on the same data dir and port.

Then everything is read back and counted (bench/chaos_count.py): messages acknowledged and lost,
duplicates, events with plaintext on the server (read directly from Synapse), and encrypted
events that stay undecryptable for the plain client, for nio and for the js peer after a grace
period. Each of these must be 0.

    python -m bench --only chaos                     # 1,000 messages, 20 kills (~10 min here)
    python -m bench --only chaos --quick             # 150 messages, 5 kills
    python -m bench --only chaos --chaos-messages 300 --chaos-kills 8
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.chaos_count import Reading, count, js_reading, nio_reading, plain_reading, raw_history
from bench.chaos_load import Killer, Peers, Sender, sync_loop
from bench.common import ProxyProcess, Row, median
from bench.env import Env
from tests.support.js_peer import JsPeer
from tests.support.nio_peer import NioPeer
from tests.support.plain_client import PlainClient
from tests.support.synapse import SynapseServer

MESSAGES, KILLS = 1000, 20
QUICK_MESSAGES, QUICK_KILLS = 150, 5
ROTATION = 50  # rotation_period_msgs of the room
PEER_EVERY = 40  # a peer sends after every this many plain messages (nio and js in turn)
SEED = 13


@dataclass
class World:
    synapse: SynapseServer
    proxy: ProxyProcess
    plain: PlainClient
    peers: Peers


@contextlib.asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    """Synapse, the proxy child, alice through it, bob/dave (nio) and carol (js) directly, all
    in one encrypted room."""
    synapse = SynapseServer(tmp / "synapse")
    await asyncio.to_thread(synapse.start)
    proxy = ProxyProcess(synapse.base_url, tmp / "proxy-chaos")
    closers: list[object] = []
    timeout = aiohttp.ClientTimeout(total=90)
    try:
        await proxy.start()
        for name in ("alice", "bob", "carol", "dave"):
            await synapse.register(name, password="pw")
        async with aiohttp.ClientSession(timeout=timeout) as http:
            plain = PlainClient(http, proxy.url)
            await plain.login("alice", "pw")
            nio = await NioPeer.login(synapse.base_url, synapse.user_id("bob"), "pw",
                                      tmp / "nio-bob", "chaos nio peer")
            closers.append(nio)
            dave = await NioPeer.login(synapse.base_url, synapse.user_id("dave"), "pw",
                                       tmp / "nio-dave", "chaos churn")
            closers.append(dave)
            js = await JsPeer.start(tmp / "js-carol.log")
            closers.append(js)
            await js.login(synapse.base_url, "carol", "pw", "chaos js peer")
            room_id = await plain.create_encrypted_room(
                invite=[nio.user_id, js.user_id, dave.user_id], rotation_period_msgs=ROTATION)
            await nio.join(room_id)
            await js.join(room_id)
            await dave.join(room_id)
            for peer in (nio.user_id, js.user_id, dave.user_id):
                await js.wait_for_member(room_id, peer)
            yield World(synapse, proxy, plain, Peers(nio, js, dave, room_id))
    finally:
        for closer in reversed(closers):
            with contextlib.suppress(Exception):
                await closer.close()  # type: ignore[attr-defined]
        await proxy.stop()
        await asyncio.to_thread(synapse.stop)


async def run(env: Env) -> None:
    args = env.state.get("args")
    messages = getattr(args, "chaos_messages", None) or (QUICK_MESSAGES if env.quick else MESSAGES)
    kills = getattr(args, "chaos_kills", None)
    kills = (QUICK_KILLS if env.quick else KILLS) if kills is None else kills
    async with world(env.tmp / "chaos") as w:
        await crash_loop(env, w, messages, kills)


async def crash_loop(env: Env, w: World, messages: int, kills: int) -> None:
    room_id = w.peers.room_id
    sender = Sender(w.plain, room_id, messages, secrets.token_hex(3))
    killer = Killer(w.proxy, sender, w.peers, w.plain, kills, ROTATION, random.Random(SEED))
    stop = asyncio.Event()
    sync_errors: Counter[str] = Counter()
    peer_sends: list[asyncio.Task[str]] = []

    def on_sent(number: int) -> None:
        if number % PEER_EVERY == PEER_EVERY - 1:
            which = "nio" if number // PEER_EVERY % 2 == 0 else "js"
            peer_sends.append(asyncio.create_task(w.peers.send(which)))

    began = time.monotonic()
    loops = [asyncio.create_task(sync_loop(w.plain, stop, sync_errors)),
             asyncio.create_task(w.peers.nio_loop(stop))]
    await asyncio.gather(sender.run(on_sent), killer.run())
    sending_s = time.monotonic() - began
    await asyncio.gather(*peer_sends)
    print(f"  sent {len(sender.acked)}/{messages} in {sending_s:.0f} s with "
          f"{len(killer.crashes)} kills; reading back", flush=True)
    await _settle(w, sender)
    stop.set()
    await asyncio.gather(*loops)
    await report(env, w, sender, killer, sending_s, sync_errors)


async def _settle(w: World, sender: Sender, deadline_s: float = 60.0) -> None:
    """Until the plain client's /sync has shown every acknowledged message (or a deadline)."""
    wanted = set(sender.acked.values())
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        seen = {e.get("event_id") for e in w.plain.timeline(w.peers.room_id)}
        if wanted <= seen:
            return
        await asyncio.sleep(0.5)


async def report(env: Env, w: World, sender: Sender, killer: Killer, sending_s: float,
                 sync_errors: Counter[str]) -> None:
    room_id = w.peers.room_id
    raw = await raw_history(w.synapse, w.peers.nio.access_token, room_id)
    wanted = [e["event_id"] for e in raw if e.get("type") == "m.room.encrypted"]
    readings: dict[str, Reading] = {}
    first: dict[str, int] = {}
    readers = {"plain client": plain_reading(w.plain, room_id, wanted),
               "matrix-nio": nio_reading(w.peers.nio, room_id, wanted),
               "js (rust-sdk)": js_reading(w.peers.js, room_id, wanted)}
    for name, reader in readers.items():  # one after the other: the machine has 2 cores
        readings[name], first[name] = await reader
    figures = count(sender.acked, sender.body, w.peers.sent, raw, readings)
    in_sync = {e.get("event_id") for e in w.plain.timeline(room_id)
               if e.get("type") == "m.room.message"
               and not e.get("content", {}).get("org.e2eproxy.undecryptable")}
    add = env.report.add
    kinds = Counter(c.kind for c in killer.crashes)
    add(Row("chaos", f"proxy SIGKILLs ({', '.join(f'{k} {n}' for k, n in kinds.items())})",
            len(killer.crashes), None, "", note="restarted on the same data dir"))
    add(Row("chaos", "messages sent by the plain client", len(sender.acked), None, "",
            note=f"{sending_s:.0f} s; retried attempts: {dict(sender.retries)}"))
    add(Row("chaos", "messages given up (never acknowledged)", len(sender.gave_up), None, "",
            target="0", met=not sender.gave_up))
    add(Row("chaos", "peer messages (nio, js)", len(w.peers.sent), None, ""))
    _zero(add, "acknowledged and lost", len(figures.lost))
    _zero(add, "duplicates on the server", figures.duplicates)
    _zero(add, f"plaintext events on the server (of {len(raw)})", len(figures.plaintext))
    for name, missing in figures.undecryptable.items():
        _zero(add, f"undecryptable for {name} (of {len(wanted)})", len(missing),
              note=f"{first[name]} at the first read, before the grace period")
    add(Row("chaos", "acknowledged, not in the plain client's /sync", len(
        set(sender.acked.values()) - in_sync), None, "", target="(informative)",
            note=f"sync errors while killed: {dict(sync_errors)}"))
    mid_send = [c.in_flight_ms for c in killer.crashes if c.in_flight_ms is not None]
    rotating = [sender.first_try_s[n] * 1000 for n in sender.first_try_s if n and not n % ROTATION]
    steady = [s * 1000 for n, s in sender.first_try_s.items() if n % ROTATION]
    if mid_send:
        took = (f"a send takes {median(steady):.0f} ms, {median(rotating):.0f} ms when it "
                "shares a new session (medians); " if rotating and steady else "")
        add(Row("chaos", f"kills with a send in flight ({len(mid_send)} of "
                f"{len(killer.crashes)}): ms into it", median(mid_send), max(mid_send), "ms",
                note=f"{took}p90 column: latest"))
    restarts = [c.restart_s for c in killer.crashes]
    recovered = [c.recovered_s for c in killer.crashes if c.recovered_s is not None]
    if restarts:
        add(Row("chaos", "restart: spawn to first answer", median(restarts), max(restarts), "s",
                note="p90 column: slowest"))
    if recovered:
        add(Row("chaos", "kill to the next acknowledged send", median(recovered),
                max(recovered), "s", note="p90 column: slowest"))
    env.report.extra["chaos"] = {
        "crashes": [vars(c) for c in killer.crashes],
        "lost": figures.lost, "plaintext": figures.plaintext,
        "undecryptable": figures.undecryptable, "gave_up": sender.gave_up,
        "peer_errors": dict(w.peers.errors),
        "mean_restart_s": statistics.fmean(restarts) if restarts else None,
    }


def _zero(add: Callable[[Row], Row], name: str, value: int, note: str | None = None) -> None:
    add(Row("chaos", name, value, None, "", target="0", met=value == 0, note=note))
