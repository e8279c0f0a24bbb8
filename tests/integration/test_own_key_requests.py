"""Room keys from our own verified devices, through two proxies (two stores: no copy between
sibling devices) and the stub homeserver: a new device reading history it has no keys for asks
the old device, which it verified and which verified it (restarted, so the key comes from its
store), and reads the history once the key is forwarded."""

from __future__ import annotations

from typing import Any

import aiohttp

from e2eproxy.control.protocol import ControlRequest
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.proxy.app_keys import REGISTRY
from tests.integration.conftest import RunningProxy, StartE2EEProxy
from tests.support.plain_client import PlainClient, login_all
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import until
from tests.support.wire import raw_messages

TEXT = "before the new device"


async def _ctl(proxy: RunningProxy, cmd: str, user: str, **args: Any) -> Any:
    app = proxy.server.app
    assert app is not None
    return await trust_commands([app[REGISTRY]])[cmd](ControlRequest(cmd, user, None, args))


async def _trust(proxy: RunningProxy, user: str, device_id: str) -> None:
    """The user marks one of their devices verified on this proxy, once it knows the device."""
    async def known() -> Any:
        listed = await _ctl(proxy, "devices", user)
        return any(d["device_id"] == device_id for d in listed["devices"])

    await until(f"{device_id} known", known)
    await _ctl(proxy, "trust", user, user_id=user, device_id=device_id, trust="verified")


async def _bodies(client: PlainClient, room_id: str) -> list[Any]:
    return [e["content"].get("body") for e in await client.messages(room_id)
            if e["type"] == "m.room.message"]


async def test_a_new_device_reads_history_with_keys_from_our_verified_device(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    first = await start_e2ee_proxy()
    (old,) = await login_all(session, first.url, stub, "alice")
    room_id = await old.create_encrypted_room()
    await old.send_text(room_id, TEXT)
    for event in raw_messages(stub.raw_events(room_id)):  # older than anything read at once
        event["origin_server_ts"] -= 3_600_000
    # Restarted: its engine holds no room key in memory; the one asked for comes from the store.
    await first.stop()
    first = await start_e2ee_proxy(store=first.store)
    await PlainClient(session, first.url, old.access_token).whoami()
    second = await start_e2ee_proxy()  # another store: nothing to copy from a sibling device
    new = PlainClient(session, second.url)
    await new.login("alice")
    assert await _bodies(new, room_id) != [TEXT]  # no key, and no verified device to ask
    assert stub.requests_to(r"/sendToDevice/m\.room_key_request/") == []
    await _trust(second, new.user_id, old.device_id)
    await _trust(first, old.user_id, str(new.device_id))

    async def readable() -> bool:
        return await _bodies(new, room_id) == [TEXT]  # a read asks (once per session)

    await until("the history readable on the new device", readable)
    assert len(stub.requests_to(r"/sendToDevice/m\.room_key_request/")) == 1
