"""Workload 2, encrypted send: PUT /send into an encrypted room versus the same into a plain room,
through the proxy (the cost of encryption), in steady state and for the first message of a new
Megolm session (a room with rotation_period_msgs = 1 rotates on every message)."""

from __future__ import annotations

import itertools
from typing import Any

from bench.common import V3, auth, interleave, timed_request
from bench.devices import encryption_state, make_device
from bench.env import Env, compare

TARGET_MS = 0.3
_txn = itertools.count(1)


def sender(env: Env, room_id: str, token: str, base: str | None = None) -> Any:
    assert env.http is not None
    http = env.http

    async def run() -> float:
        url = f"{base or env.proxied}{V3}/rooms/{room_id}/send/m.room.message/b{next(_txn)}"
        elapsed, status, body = await timed_request(
            http, "PUT", url, headers=auth(token), json={"msgtype": "m.text", "body": "x" * 80})
        assert status == 200, (status, body)
        return elapsed
    return run


async def run(env: Env) -> None:
    assert env.stub is not None
    stub = env.stub
    me = await env.user_through_proxy("sender")
    token, my_id = me["access_token"], me["user_id"]
    peer = stub.register("send-peer", "pw")
    for device in ("PEER1", "PEER2"):
        make_device(stub, peer, device)
    rooms = {}
    for name, extra in (("encrypted", [encryption_state()]),
                        ("new-session", [encryption_state(rotation_period_msgs=1)]),
                        ("plain", [])):
        room_id = stub.create_room(my_id, invite=[peer], initial_state=extra)
        stub.room_ops.join(stub.room(room_id), peer)
        rooms[name] = room_id
    variants = {name: sender(env, room_id, token) for name, room_id in rooms.items()}
    variants["direct"] = sender(env, rooms["plain"], token, env.direct)
    for send in variants.values():  # first message: Olm sessions, member lists, room state
        await send()
    rounds = 40 if env.quick else 300
    samples = await interleave(variants, rounds, warmup=3)
    compare(env, "send", "PUT /send, encrypted room", samples["encrypted"], samples["plain"],
            "plain room", added_name="  encryption cost per send", target=f"<= {TARGET_MS} ms",
            check=lambda added, _: added <= TARGET_MS)
    compare(env, "send", "PUT /send, new session each message", samples["new-session"],
            samples["plain"], "plain room", added_name="  new session + share to 2+1 devices",
            target="(informative)")
    compare(env, "send", "PUT /send, plain room via proxy", samples["plain"], samples["direct"],
            "direct", added_name="  added by the proxy to a plain send", target="(informative)")
    env.record_memory("send")
