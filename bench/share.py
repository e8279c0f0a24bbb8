"""Workload 4, key sharing: the first message into rooms with 10, 100 and 1,000 recipient devices
through the proxy (members, /keys/query, /keys/claim, Olm sessions, to-device batches), and how
it grows. Recipient devices are real vodozemac devices created directly on the stub, 10 per user.

Two cases per size: a freshly logged-in proxy device (every step, Olm sessions included), and a
new room with the same recipients for a device that already has their Olm sessions (the share
alone: one Megolm session, to-device batches)."""

from __future__ import annotations

import itertools
import time

from bench.common import V3, Row, auth, median, p90, timed_request
from bench.devices import encryption_state, make_device
from bench.env import Env

DEVICES_PER_USER = 10
_logins = itertools.count(1)


def recipients(env: Env, size: int) -> list[str]:
    assert env.stub is not None
    users = []
    for u in range(size // DEVICES_PER_USER):
        user = env.stub.register(f"share{size}-{u}", "pw")
        for d in range(DEVICES_PER_USER):
            make_device(env.stub, user, f"S{size}U{u}D{d}")  # unique: nio keys by device id
        users.append(user)
    return users


async def first_send(env: Env, token: str, my_id: str, users: list[str]) -> float:
    assert env.stub is not None and env.http is not None
    stub = env.stub
    room_id = stub.create_room(my_id, invite=users, initial_state=[encryption_state()])
    room = stub.room(room_id)
    for user in users:
        stub.room_ops.join(room, user)
    url = f"{env.proxied}{V3}/rooms/{room_id}/send/m.room.message/first"
    elapsed, status, body = await timed_request(
        env.http, "PUT", url, headers=auth(token), json={"msgtype": "m.text", "body": "hello"})
    assert status == 200, (status, body)
    stub.requests.clear()
    return elapsed


async def run(env: Env) -> None:
    sizes = (10, 100) if env.quick else (10, 100, 1000)
    rounds = 2 if env.quick else 4
    began = time.perf_counter()
    users = {size: recipients(env, size) for size in sizes}
    env.report.extra["share_setup_s"] = time.perf_counter() - began
    fresh: dict[int, list[float]] = {size: [] for size in sizes}
    again: dict[int, list[float]] = {size: [] for size in sizes}
    nio: list[float] = []
    for number in range(rounds):
        if number % 2 and env.state.get("with_nio"):
            nio.append(await _nio(env, users[100]))
        order = sizes if number % 2 == 0 else sizes[::-1]
        for size in order:
            me = await env.user_through_proxy("sharer", device_id=f"SHARER{next(_logins)}")
            fresh[size].append(await first_send(env, me["access_token"], me["user_id"],
                                                users[size]))
            again[size].append(await first_send(env, me["access_token"], me["user_id"],
                                                users[size]))
            await _logout(env, me["access_token"])  # its worker would add noise to later rounds
        if number % 2 == 0 and env.state.get("with_nio"):
            nio.append(await _nio(env, users[100]))
    env.state["share"] = {"fresh": fresh, "again": again}
    for label, data in (("new device", fresh), ("Olm sessions exist", again)):
        totals = {s: median(data[s]) * 1000 for s in sizes}
        marginal = {}
        for small, big in itertools.pairwise(sizes):
            marginal[big] = (totals[big] - totals[small]) / (big - small)
        for size in sizes:
            target, met, ratio, base = None, None, None, f"{totals[size] / size:.3f} ms/device"
            if size in marginal:
                base = f"marginal {marginal[size]:.3f} ms/dev"
                ratio = marginal[size] / marginal[sizes[1]]
            if size == sizes[-1] and len(sizes) > 2 and label == "new device":
                # Linear: each extra device costs no more in a big room than in a mid-size one.
                target = "linear: marginal <= 1.5x"
                met = ratio is not None and ratio <= 1.5
            env.report.add(Row("share", f"first send, {size} devices, {label}", totals[size],
                               p90(data[size]) * 1000, "ms", base, ratio, target, met,
                               note="ratio: marginal cost per device over that from 10 to 100",
                               samples=len(data[size])))
    if nio:
        proxy, native = median(fresh[100]) * 1000, median(nio) * 1000
        env.report.add(Row("share", "first send, 100 devices, matrix-nio client", native,
                           p90(nio) * 1000, "ms", f"proxy {proxy:.3g} ms", proxy / native,
                           "proxy <= nio", proxy <= native, samples=len(nio),
                           note="ratio: proxy over nio"))
    env.record_memory("share")


async def _logout(env: Env, token: str) -> None:
    assert env.http is not None
    async with env.http.post(f"{env.proxied}{V3}/logout", headers=auth(token), json={}) as resp:
        await resp.read()


async def _nio(env: Env, users: list[str]) -> float:
    from bench.nio_share import nio_first_send

    assert env.stub is not None
    return await nio_first_send(env.stub, env.tmp / "nio", users)
