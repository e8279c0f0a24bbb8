"""The fault matrix's world (tests/integration/test_fault_matrix_*.py): a proxy in front of the
stub homeserver with a store whose saves can fail, shortened retries and a short upstream
timeout; two members of an encrypted room logged in through it; and the faults the matrix
injects, one per column.

The proxy's background syncs are held by the stub for the whole test (a delay that only ends
at shutdown), so the clients' own syncs are the only ones feeding the engines: a fault on a
sync hits the client's, and a room key arrives in the sync the test faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from e2eproxy.config import EncryptionConfig
from e2eproxy.store import AccountKey
from e2eproxy.types import DeviceId, UserId
from tests.support.plain_client import PlainClient, login_all
from tests.support.store_faults import FailingSaves
from tests.support.stub_homeserver import Fault, StubHomeserver
from tests.support.timing import ScaledTimer, until
from tests.support.wire import encryption_state

# Short enough that a cell with a timed-out request stays well under two seconds, long enough
# that a busy machine does not time out a request the stub answers at once.
UPSTREAM_TIMEOUT_S = 0.4
LATE_S = 1.0  # a "timeout": the stub does the work at once, and answers this late
RETRY_AFTER_MS = 1_500
BACKGROUND_SYNC = r"set_presence=offline"  # only the proxy's own /sync asks for this
CLIENT_SYNC = r"^(?!.*set_presence=offline)"

# Matrix column -> the fault's settings. 429 is transient (one answer, as a rate limit is);
# the others last until the test removes them, so every retry of the proxy meets them too.
FAULTS: dict[str, dict[str, Any]] = {
    "429": {"status": 429, "retry_after_ms": RETRY_AFTER_MS, "times": 1},
    "500": {"status": 500},
    "502": {"status": 502},
    "timeout": {"late": LATE_S},
    "reset": {"drop": True},
}


@dataclass
class World:
    stub: StubHomeserver
    store: FailingSaves
    timer: ScaledTimer
    alice: PlainClient
    bob: PlainClient
    room_id: str

    def key_of(self, client: PlainClient) -> AccountKey:
        return AccountKey(UserId(client.user_id), DeviceId(client.device_id))

    def inject(self, path_regex: str, method: str, fault: str, **narrow: Any) -> Fault:
        return self.stub.faults.add(path_regex, method=method, **FAULTS[fault], **narrow)

    def clear(self, fault: Fault) -> None:
        if fault in self.stub.faults.faults:
            self.stub.faults.remove(fault)


async def make_world(
    stub: StubHomeserver, session: aiohttp.ClientSession, start: Any
) -> World:
    """Alice and Bob through one proxy, in an encrypted room the stub made (so the proxy
    learns of it, its encryption, its members and their devices only as Alice's first send
    asks), Bob joined through the proxy."""
    stub.faults.add(r"/sync$", method="GET", query_regex=BACKGROUND_SYNC, delay=3_600)
    store, timer = FailingSaves(), ScaledTimer()
    proxy = await start(
        store=store, timer=timer, upstream_timeout=UPSTREAM_TIMEOUT_S,
        encryption=EncryptionConfig(missing_key_wait=0.5),
    )
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    for client in (alice, bob):
        await settled(stub, client)
    room_id = stub.create_room(
        alice.user_id, initial_state=[encryption_state()], invite=[bob.user_id]
    )
    await bob.join(room_id)
    return World(stub, store, timer, alice, bob, room_id)


async def settled(stub: StubHomeserver, client: PlainClient) -> None:
    """Until the proxy has done what a new device's engine does by itself: its keys uploaded
    and its own user's devices asked for (so no fault added later meets those)."""
    token = f"Bearer {client.access_token}"

    async def done() -> bool:
        mine = [r for r in stub.requests if r.headers.get("Authorization") == token]
        uploaded = stub.keys.state(client.user_id, client.device_id).device_keys is not None
        return uploaded and any(r.path.endswith("/keys/query") for r in mine)

    await until(f"{client.user_id}'s keys uploaded and devices queried", done)


def outcome(status: int, body: Any) -> str:
    """What the client saw, as the README's table says it: "200" or "<status> <errcode>"."""
    if status == 200:
        assert isinstance(body, dict), body
        return "200"
    assert isinstance(body, dict) and isinstance(body.get("errcode"), str), (status, body)
    return f"{status} {body['errcode']}"
