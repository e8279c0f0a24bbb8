"""Real crypto devices created directly on the stub: an OlmMachine per device uploads its signed
device keys and one-time keys through the stub's Python API (no HTTP, no sync loop)."""

from __future__ import annotations

import itertools
from typing import Any

from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.protocol.api import RequestKind
from tests.support.stub_homeserver import StubHomeserver

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
_txns = itertools.count(1)


def encryption_state(**settings: Any) -> dict[str, Any]:
    return {**ENCRYPTION, "content": {**ENCRYPTION["content"], **settings}}


def make_device(stub: StubHomeserver, user_id: str, device_id: str) -> OlmMachine:
    """A device with keys and one-time keys on the stub; returns its engine."""
    machine = OlmMachine(user_id, device_id, ManualClock(1_700_000_000_000))
    stub.open_session(user_id, device_id, f"bench {device_id}")  # nio needs a display name
    drive(stub, machine)
    return machine


def drive(stub: StubHomeserver, machine: OlmMachine,
          requests: list[Any] | None = None) -> None:
    """Answer the engine's requests from the stub's state until it has none."""
    pending = list(requests) if requests is not None else machine.outgoing_requests()
    while pending:
        for request in pending:
            machine.mark_request_as_sent(request.id, answer(stub, machine, request))
        pending = machine.outgoing_requests()


def answer(stub: StubHomeserver, machine: OlmMachine, request: Any) -> dict[str, Any]:
    user, device = str(machine.user_id), str(machine.device_id)
    body = request.body
    if request.kind is RequestKind.KEYS_UPLOAD:
        return {"one_time_key_counts": stub.upload_keys(user, device, body)}
    if request.kind is RequestKind.KEYS_QUERY:
        return stub.keys.query(user, body["device_keys"])
    if request.kind is RequestKind.KEYS_CLAIM:
        return stub.keys.claim(body["one_time_keys"])
    if request.kind is RequestKind.TO_DEVICE:
        event_type = request.path.split("/sendToDevice/")[1].split("/")[0]
        stub.send_to_device(user, device, f"bench{next(_txns)}", event_type, body["messages"])
        return {}
    raise ValueError(request.kind)


def share(stub: StubHomeserver, machine: OlmMachine, room_id: str, users: list[str]) -> None:
    """Run the engine's query -> claim -> to-device steps against the stub."""
    for _ in range(6):
        requests = machine.share_room_key(room_id, users)
        if not requests:
            return
        drive(stub, machine, requests)
