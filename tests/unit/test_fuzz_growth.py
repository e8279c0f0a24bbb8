"""Nothing an engine keeps grows without bound under a flood of to-device events (issue 13,
item 4): verification requests and starts from ever new devices, events of unknown flows, key
requests and secret requests, unasked-for forwarded keys and secrets, withheld notices, broken
Olm messages. Each kind is sent twice over; whatever the engine holds (every container reachable
from the machine) may grow with the first flood, up to its cap, but not again with the second.
The caps too large to reach here (seen to-device hashes, withheld notices) are lowered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from e2eproxy.crypto import sync, withheld
from e2eproxy.crypto.verification import registry
from tests.support.fuzz_peers import Peers, b64

FLOOD = 1_500
BATCH = 250  # events per sync body

Builder = Callable[[Peers, int], dict[str, Any]]


def _verification_request(peers: Peers, i: int) -> dict[str, Any]:
    content = {"from_device": f"EVIL{i}", "methods": ["m.sas.v1"],
               "timestamp": peers.now_ms(), "transaction_id": f"req{i}"}
    return {"type": "m.key.verification.request", "sender": peers.alice.user_id,
            "content": content}


def _verification_start(peers: Peers, i: int) -> dict[str, Any]:
    content = {**peers.templates["m.key.verification.start"], "from_device": f"EVIL{i}",
               "transaction_id": f"start{i}"}
    return {"type": "m.key.verification.start", "sender": peers.alice.user_id,
            "content": content}


def _unknown_flow(peers: Peers, i: int) -> dict[str, Any]:
    content = {"transaction_id": f"nobody{i}", "key": b64(b"\x03" * 32)}
    return {"type": "m.key.verification.key", "sender": peers.alice.user_id, "content": content}


def _key_request(own: bool) -> Builder:
    def build(peers: Peers, i: int) -> dict[str, Any]:
        sender = peers.phone if own else peers.alice
        body = {**peers.templates["m.room_key_request"]["body"], "session_id": f"S{i}"}
        content = {"action": "request", "body": body, "request_id": f"r{i}",
                   "requesting_device_id": sender.device_id}
        return peers.olm(sender, peers.envelope(sender, "m.room_key_request", content))

    return build


def _secret_request(peers: Peers, i: int) -> dict[str, Any]:
    content = {"action": "request", "name": f"m.custom.{i}", "request_id": f"q{i}",
               "requesting_device_id": peers.phone.device_id}
    return {"type": "m.secret.request", "sender": peers.bob.user_id, "content": content}


def _secret_send(peers: Peers, i: int) -> dict[str, Any]:
    content = {"request_id": f"never-asked{i}", "secret": b64(b"\x04" * 32)}
    return peers.olm(peers.phone, peers.envelope(peers.phone, "m.secret.send", content))


def _forwarded_key(peers: Peers, i: int) -> dict[str, Any]:
    content = peers.templates["m.forwarded_room_key"]
    return peers.olm(peers.phone, peers.envelope(peers.phone, "m.forwarded_room_key", content))


def _withheld(peers: Peers, i: int) -> dict[str, Any]:
    content = {**peers.templates["m.room_key.withheld"], "session_id": f"W{i}"}
    return {"type": "m.room_key.withheld", "sender": peers.alice.user_id, "content": content}


def _broken_olm(peers: Peers, i: int) -> dict[str, Any]:
    curve = peers.bob.machine.identity_keys["curve25519"]
    content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": b64(i.to_bytes(32)),
               "ciphertext": {curve: {"type": i % 2, "body": b64(i.to_bytes(64))}}}
    return {"type": "m.room.encrypted", "sender": f"@evil{i}:test", "content": content}


KINDS: dict[str, Builder] = {
    "verification requests": _verification_request,
    "verification starts": _verification_start,
    "events of unknown flows": _unknown_flow,
    "key requests from our device": _key_request(own=True),
    "key requests from another user": _key_request(own=False),
    "secret requests": _secret_request,
    "secrets nobody asked for": _secret_send,
    "forwarded keys nobody asked for": _forwarded_key,
    "withheld notices": _withheld,
    "broken Olm messages": _broken_olm,
}


def _containers(obj: Any, path: str = "machine", seen: set[int] | None = None,
                found: dict[str, int] | None = None) -> dict[str, int]:
    """The size of every dict, list and set held by the machine and its parts."""
    seen, found = seen if seen is not None else set(), found if found is not None else {}
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        slots = getattr(type(obj), "__slots__", ())
        fields = {name: getattr(obj, name) for name in slots if hasattr(obj, name)}
    for name, value in fields.items():
        if isinstance(value, dict | list | set):
            found[f"{path}.{name}"] = len(value)
        elif type(value).__module__.startswith("e2eproxy.crypto"):
            _containers(value, f"{path}.{name}", seen, found)
    return found


def _flood(peers: Peers, build: Builder, start: int) -> None:
    events = [build(peers, i) for i in range(start, start + FLOOD)]
    for at in range(0, FLOOD, BATCH):
        peers.bob.machine.receive_sync({"to_device": {"events": events[at:at + BATCH]}})
        peers.settle()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_flood_grows_nothing_without_bound(kind: str, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.setattr(sync, "MAX_SEEN_HASHES", 500)
    monkeypatch.setattr(withheld, "MAX_NOTICES", 500)
    peers = Peers()
    _flood(peers, KINDS[kind], 0)
    first = _containers(peers.bob.machine)
    _flood(peers, KINDS[kind], FLOOD)
    second = _containers(peers.bob.machine)
    grown = {name: (first.get(name, 0), size) for name, size in second.items()
             if size - first.get(name, 0) > FLOOD // 10}
    assert grown == {}, f"{kind} keep growing: {grown}"


def test_verification_flows_others_open_are_capped() -> None:
    """The flood above, in numbers: the flows others open, and the finished ones kept."""
    peers = Peers()
    _flood(peers, _verification_request, 0)
    flows = peers.bob.machine.trust.flows.flows()
    open_flows = [f for f in flows if not f.finished]
    assert len(open_flows) <= registry.MAX_OPEN_PER_USER  # all from Alice
    assert len(flows) - len(open_flows) <= registry.KEEP_FINISHED
