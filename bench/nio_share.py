"""The comparison for key sharing: a native matrix-nio client (vodozemac crypto, its own SQLite
store) doing the same first send into an encrypted room, against the same stub homeserver.

nio learns the room and its members from a /sync before the timed send (untimed); its timed
send runs /keys/query, /keys/claim, the Olm sessions, the to-device batches and the send, as
``room_send(..., ignore_unverified_devices=True)`` does them."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomSendResponse

from bench.devices import encryption_state
from tests.support.stub_homeserver import StubHomeserver

_numbers = itertools.count(1)


async def nio_first_send(stub: StubHomeserver, base_dir: Path, users: list[str]) -> float:
    assert stub.base_url is not None
    number = next(_numbers)
    localpart = f"niosharer{number}"
    user_id = stub.register(localpart, "pw")
    store = base_dir / f"nio-{number}"
    store.mkdir(parents=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(stub.base_url, user_id, store_path=str(store), config=config)
    try:
        response = await client.login("pw", device_name="bench")
        assert isinstance(response, LoginResponse), response
        if client.should_upload_keys:
            await client.keys_upload()
        room_id = stub.create_room(user_id, invite=users, initial_state=[encryption_state()])
        room = stub.room(room_id)
        for user in users:
            stub.room_ops.join(room, user)
        await client.sync(timeout=0, full_state=True)
        began = time.perf_counter()
        if client.should_query_keys:
            await client.keys_query()
        sent = await client.room_send(room_id, "m.room.message",
                                      {"msgtype": "m.text", "body": "hello"},
                                      ignore_unverified_devices=True)
        elapsed = time.perf_counter() - began
        assert isinstance(sent, RoomSendResponse), sent


        return elapsed
    finally:
        await client.close()
        stub.requests.clear()
