"""Engine benchmarks: decrypt_room_event vs raw vodozemac, and sharing a room key to 500 devices.

Run: ``python bench/bench_engine.py`` (add ``--rounds N`` for more repetitions). Prints a table.
Timing is measured here, never asserted by tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vodozemac

from e2eproxy.crypto.changes import InboundGroupSessionRecord
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.results import Decrypted
from e2eproxy.protocol.api import RequestKind
from e2eproxy.protocol.canonical import canonical_json
from e2eproxy.types import RoomId, SessionId

ROOM = "!bench:test"
N_EVENTS = 1000
N_DEVICES = 500
BODY = "x" * 400


def _events() -> tuple[vodozemac.SessionKey, list[dict[str, Any]]]:
    outbound = vodozemac.GroupSession()
    session_key = outbound.session_key  # at index 0, before any message
    events = []
    for i in range(N_EVENTS):
        payload = {"type": "m.room.message", "room_id": ROOM,
                   "content": {"msgtype": "m.text", "body": f"{i} {BODY}"}}
        events.append({
            "type": "m.room.encrypted", "sender": "@alice:test", "event_id": f"$e{i}",
            "origin_server_ts": 1_700_000_000_000 + i, "room_id": ROOM, "unsigned": {},
            "content": {"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "k",
                        "device_id": "D", "session_id": outbound.session_id,
                        "ciphertext": outbound.encrypt(canonical_json(payload)).to_base64()},
        })
    return session_key, events


def _engine(session_key: vodozemac.SessionKey) -> OlmMachine:
    machine = OlmMachine("@bob:test", "BOB", ManualClock())
    inbound = vodozemac.InboundGroupSession(session_key)
    machine.load_inbound_group_sessions([InboundGroupSessionRecord(
        RoomId(ROOM), SessionId(inbound.session_id), "k", "e", inbound, False, False, 0)])
    return machine


def time_engine(outbound: vodozemac.SessionKey, events: list[dict[str, Any]]) -> float:
    machine = _engine(outbound)  # fresh replay table each round
    start = time.perf_counter()
    for event in events:
        result = machine.decrypt_room_event(ROOM, event)
    elapsed = time.perf_counter() - start
    assert isinstance(result, Decrypted)
    return elapsed


def time_raw(outbound: vodozemac.SessionKey, events: list[dict[str, Any]]) -> float:
    session = vodozemac.InboundGroupSession(outbound)
    start = time.perf_counter()
    for event in events:
        session.decrypt(vodozemac.MegolmMessage.from_base64(event["content"]["ciphertext"]))
    return time.perf_counter() - start


def bench_decrypt(rounds: int) -> tuple[list[float], list[float]]:
    outbound, events = _events()
    engine, raw = [], []
    for i in range(rounds):  # interleaved A/B, alternating who goes first
        if i % 2:
            raw.append(time_raw(outbound, events))
            engine.append(time_engine(outbound, events))
        else:
            engine.append(time_engine(outbound, events))
            raw.append(time_raw(outbound, events))
    return engine, raw


def _devices() -> tuple[dict[str, Any], dict[str, Any]]:
    """Device keys and one claimed one-time key for N_DEVICES devices of one user."""
    keys: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    for i in range(N_DEVICES):
        device = OlmMachine("@many:test", f"D{i:04d}", ManualClock())
        upload = device.outgoing_requests()[0].body
        keys[f"D{i:04d}"] = upload["device_keys"]
        key_id, otk = next(iter(upload["one_time_keys"].items()))
        claims[f"D{i:04d}"] = {key_id: otk}
    return keys, claims


def bench_share(devices: dict[str, Any], claims: dict[str, Any]) -> tuple[float, int]:
    machine = OlmMachine("@alice:test", "ALICE", ManualClock())
    machine.update_room_encryption(ROOM, {"algorithm": "m.megolm.v1.aes-sha2"})
    start = time.perf_counter()
    requests = machine.share_room_key(ROOM, ["@many:test"])
    (query,) = requests
    machine.mark_request_as_sent(
        query.id, {"device_keys": {"@many:test": devices, "@alice:test": {}}}
    )
    (claim,) = machine.share_room_key(ROOM, ["@many:test"])
    machine.mark_request_as_sent(claim.id, {"one_time_keys": {"@many:test": claims}})
    to_device = machine.share_room_key(ROOM, ["@many:test"])
    elapsed = time.perf_counter() - start
    assert all(r.kind is RequestKind.TO_DEVICE for r in to_device)
    sent = sum(len(d) for r in to_device for d in r.body["messages"].values())
    return elapsed, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    engine_runs, raw_runs = bench_decrypt(args.rounds)
    engine, raw = statistics.median(engine_runs), statistics.median(raw_runs)
    best_engine, best_raw = min(engine_runs), min(raw_runs)
    devices, claims = _devices()
    share_times = []
    sent = 0
    for _ in range(3):
        elapsed, sent = bench_share(devices, claims)
        share_times.append(elapsed)
    share = statistics.median(share_times)
    print(f"{'benchmark':<48} {'total':>10} {'per item':>12}")
    print(f"{'decrypt_room_event x' + str(N_EVENTS):<48} {engine * 1e3:>8.1f}ms "
          f"{engine / N_EVENTS * 1e6:>9.1f}µs")
    print(f"{'raw InboundGroupSession.decrypt x' + str(N_EVENTS):<48} {raw * 1e3:>8.1f}ms "
          f"{raw / N_EVENTS * 1e6:>9.1f}µs")
    print(f"{'engine / raw (medians)':<48} {engine / raw:>10.2f}x  "
          f"(overhead {engine / raw - 1:+.0%})")
    print(f"{'engine / raw (best rounds)':<48} {best_engine / best_raw:>10.2f}x  "
          f"(overhead {best_engine / best_raw - 1:+.0%})")
    print(f"{'share_room_key to ' + str(sent) + ' devices (incl. Olm setup)':<48} "
          f"{share * 1e3:>8.1f}ms {share / max(sent, 1) * 1e6:>9.1f}µs")
    print(f"(medians of {args.rounds} interleaved rounds for decryption, 3 for sharing)")


if __name__ == "__main__":
    main()
