"""Workload 3, decryption: /sync and /messages carrying 1,000 encrypted events from 10 Megolm
sessions, through the proxy versus the same request direct to the homeserver, and versus raw
vodozemac (InboundGroupSession.decrypt of the same ciphertexts in this process: the floor)."""

from __future__ import annotations

import json
import time
from typing import Any

import vodozemac

from bench.common import V3, Row, auth, interleave, median, timed_request
from bench.devices import encryption_state, make_device, share
from bench.env import Env, compare

SENDERS = 10
EVENTS = 1000
PER_EVENT_TARGET_MS = 0.1
FLOOR_RATIO_TARGET = 2.0
HISTORY_RATIO_TARGET = 1.5


async def _fill(env: Env, my_id: str) -> tuple[str, list[tuple[Any, str]]]:
    """A room with EVENTS encrypted events from SENDERS devices, their keys sent to us over
    Olm; returns the room and (inbound session, ciphertext) pairs for the raw floor."""
    assert env.stub is not None
    stub = env.stub
    senders = [stub.register(f"dec-sender{i}", "pw") for i in range(SENDERS)]
    room_id = stub.create_room(my_id, invite=senders, initial_state=[encryption_state()])
    room = stub.room(room_id)
    machines = []
    for user in senders:
        stub.room_ops.join(room, user)
        machine = make_device(stub, user, "SENDER")
        machine.update_room_encryption(room_id, {"algorithm": "m.megolm.v1.aes-sha2",
                                                 "rotation_period_msgs": 10_000})
        machine.update_room_members(room_id, {user: "join", my_id: "join"})
        share(stub, machine, room_id, [user, my_id])
        machines.append(machine)
    sessions = {}
    for machine in machines:
        for record in machine.take_changes().inbound_group_sessions:
            sessions[record.session_id] = record.session
    ciphertexts = []
    for number in range(EVENTS):
        machine = machines[number % SENDERS]
        content = machine.encrypt(room_id, "m.room.message",
                                  {"msgtype": "m.text", "body": f"message {number} " + "x" * 60})
        stub.room_ops.send(room, str(machine.user_id), "m.room.encrypted", content,
                           device_id="SENDER")
        ciphertexts.append((sessions[content["session_id"]], content["ciphertext"]))
    return room_id, ciphertexts


def _count_plain(body: Any) -> tuple[int, int]:
    """(plain m.room.message events, still-encrypted or notice events) anywhere in the body."""
    text = json.dumps(body)
    return text.count('"m.room.message"'), text.count('"m.room.encrypted"')


async def run(env: Env) -> None:
    assert env.http is not None
    http = env.http
    me = await env.user_through_proxy("reader")
    token, my_id = me["access_token"], me["user_id"]
    room_id, ciphertexts = await _fill(env, my_id)
    flt = json.dumps({"room": {"rooms": [room_id], "timeline": {"limit": EVENTS}},
                      "presence": {"not_types": ["*"]}})
    sync_params = {"filter": flt, "timeout": "0"}
    messages_params = {"dir": "b", "limit": str(EVENTS)}

    # The first /sync through the proxy delivers the room keys; wait until all decrypt.
    for _ in range(50):
        _, _status, raw = await timed_request(http, "GET", f"{env.proxied}{V3}/sync",
                                             params=sync_params, headers=auth(token))
        plain, encrypted = _count_plain(json.loads(raw))
        if plain >= EVENTS and encrypted == 0:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"the proxy decrypted only {plain} of {EVENTS} events")

    def request(base: str, path: str, params: dict[str, str]) -> Any:
        async def run() -> float:
            elapsed, status, _ = await timed_request(http, "GET", base + path, params=params,
                                                     headers=auth(token))
            assert status == 200, status
            return elapsed
        return run

    def raw_floor() -> Any:
        async def run() -> float:
            began = time.perf_counter()
            for session, ciphertext in ciphertexts:
                session.decrypt(vodozemac.MegolmMessage.from_base64(ciphertext))
            return time.perf_counter() - began
        return run

    messages = f"{V3}/rooms/{room_id}/messages"
    rounds = 5 if env.quick else 25
    samples = await interleave({
        "sync proxy": request(env.proxied, f"{V3}/sync", sync_params),
        "sync direct": request(env.direct, f"{V3}/sync", sync_params),
        "messages proxy": request(env.proxied, messages, messages_params),
        "messages direct": request(env.direct, messages, messages_params),
        "raw": raw_floor(),
    }, rounds)
    raw_ms = median(samples["raw"]) * 1000 / EVENTS
    env.report.add(Row("decrypt", f"raw vodozemac decrypt, per event (x{EVENTS})", raw_ms,
                       None, "ms", note="the floor", samples=len(samples["raw"])))
    for kind in ("sync", "messages"):
        label = "/sync" if kind == "sync" else "/messages"
        compare(env, "decrypt", f"{label} with {EVENTS} encrypted events via proxy",
                samples[f"{kind} proxy"], samples[f"{kind} direct"], "direct",
                target=f"<= {HISTORY_RATIO_TARGET}x direct",
                check=lambda _, ratio: ratio <= HISTORY_RATIO_TARGET)
        per_event = (median(samples[f"{kind} proxy"]) - median(samples[f"{kind} direct"])
                     ) * 1000 / EVENTS
        env.report.add(Row("decrypt", f"  added per event, {label}", per_event, None, "ms",
                           f"raw {raw_ms:.3f} ms", per_event / raw_ms,
                           f"<= {PER_EVENT_TARGET_MS} ms, <= {FLOOR_RATIO_TARGET:.0f}x raw",
                           per_event <= PER_EVENT_TARGET_MS
                           and per_event / raw_ms <= FLOOR_RATIO_TARGET))
    env.record_memory("decrypt")
