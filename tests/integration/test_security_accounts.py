"""Whose keys a token gets (#16): an account is bound to a token only when the configured
homeserver itself says the token is that user's device, of its own server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from e2eproxy.config import EncryptionConfig
from e2eproxy.proxy.account import HOMESERVER_SECRET
from e2eproxy.proxy.app_keys import REGISTRY
from e2eproxy.proxy.registry import AccountRegistry
from e2eproxy.store import AccountKey, MemoryStore
from e2eproxy.types import DeviceId, UserId
from tests.integration.conftest import RunningProxy, StartE2EEProxy
from tests.support.plain_client import PlainClient, encrypted_room_of, login_all
from tests.support.stub_homeserver import StubHomeserver, running_stub

LOGIN = r"/_matrix/client/v3/login$"


def registry_of(proxy: RunningProxy) -> AccountRegistry:
    app = proxy.server.app
    assert app is not None
    return app[REGISTRY]


def key_of(user_id: str, device_id: str) -> AccountKey:
    return AccountKey(UserId(user_id), DeviceId(device_id))


async def test_a_login_answer_does_not_rebind_another_users_account(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Whatever answered the login (another host, before targets were checked) named Alice's
    device with Mallory's token: her account, its keys and rooms, must stay hers."""
    proxy = await start_e2ee_proxy()
    alice, mallory = await login_all(session, proxy.url, stub, "alice", "mallory")
    registry = registry_of(proxy)
    alice_key = key_of(alice.user_id, alice.device_id)
    stub.faults.add(LOGIN, method="POST", status=200, times=1, body={
        "user_id": alice.user_id, "device_id": alice.device_id,
        "access_token": mallory.access_token, "home_server": "stub.test",
    })
    attacker = PlainClient(session, proxy.url)
    await attacker.login("mallory")  # answered with Alice's identity and Mallory's token
    assert registry.accounts[alice_key].access_token == alice.access_token
    bound = registry.tokens.get(str(mallory.access_token))
    assert bound is not None and bound.user_id == mallory.user_id, bound
    assert bound.account is not registry.accounts[alice_key]
    # Alice's own token still drives her account.
    assert (await alice.whoami())["user_id"] == alice.user_id
    assert registry.tokens[str(alice.access_token)].account is registry.accounts[alice_key]


async def test_a_user_of_another_server_never_gets_keys(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Even when the homeserver confirms it, a user ID of another server than the one this
    proxy serves gets no account (no keys created, none restored)."""
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")  # pins stub.test
    stub.register("mallory", "pw")
    direct = stub.login("mallory", "pw", device_id="EVILDEV")
    foreign = {"user_id": "@alice:evil.example", "device_id": "EVILDEV"}
    stub.faults.add(LOGIN, method="POST", status=200, times=1,
                    body={**foreign, "access_token": direct.access_token})
    stub.faults.add(r"/account/whoami$", status=200, times=1, body=foreign)
    attacker = PlainClient(session, proxy.url)
    await attacker.login("mallory")
    registry = registry_of(proxy)
    evil_key = key_of("@alice:evil.example", "EVILDEV")
    assert evil_key not in registry.accounts
    assert evil_key not in await proxy.store.list_accounts()
    assert stub.keys.devices.get(("@mallory:stub.test", "EVILDEV")) is None or (
        stub.keys.devices[("@mallory:stub.test", "EVILDEV")].device_keys is None
    )
    assert registry.server_name == "stub.test"
    assert key_of(alice.user_id, alice.device_id) in registry.accounts


@pytest.fixture
async def second_homeserver() -> AsyncIterator[StubHomeserver]:
    """Another homeserver claiming the same server name (a misconfiguration, or a lie)."""
    async with running_stub(StubHomeserver("stub.test")) as served:
        yield served


async def test_the_same_user_id_on_two_homeservers_shares_nothing(
    stub: StubHomeserver,
    second_homeserver: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
) -> None:
    """Two homeservers behind one proxy, one store: @alice on the second one is not @alice on
    the first. She gets neither the first one's device (its keys) nor, for a new device, the
    room keys its devices hold."""
    shared = MemoryStore()
    first = await start_e2ee_proxy(store=shared)
    second = await start_e2ee_proxy(
        store=shared, homeserver=second_homeserver.base_url,
        encryption=EncryptionConfig(missing_key_wait=0),
    )
    alice, bob = await login_all(session, first.url, stub, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    said = await bob.send_text(room_id, "only for the first homeserver")
    assert (await alice.wait_for_event(room_id, said))["content"]["body"].startswith("only")
    raw = next(e for e in stub.raw_events(room_id) if e.get("event_id") == said)

    second_homeserver.register("alice", "pw")
    same_device = PlainClient(session, second.url)
    await same_device.login("alice", device_id=alice.device_id)
    alice_key = key_of(alice.user_id, alice.device_id)
    assert alice_key not in registry_of(second).accounts
    assert registry_of(first).accounts[alice_key].access_token == alice.access_token
    assert await shared.get_secret(alice_key, HOMESERVER_SECRET) == stub.base_url

    new_device = PlainClient(session, second.url)
    await new_device.login("alice")
    second_homeserver.faults.add(r"/event/", status=200, body=raw)
    event = await new_device.event(room_id, said)
    assert "only for the first" not in json.dumps(event), event
    assert await shared.count_inbound_group_sessions(
        key_of(new_device.user_id, new_device.device_id)
    ) == 0


async def test_a_device_deleted_through_the_proxy_forgets_its_keys(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Like a logout: DELETE /devices/{id} and POST /delete_devices, once the server says done."""
    proxy = await start_e2ee_proxy()
    stub.register("alice", "pw")
    first, second, third = (PlainClient(session, proxy.url) for _ in range(3))
    for client in (first, second, third):
        await client.login("alice")
    keys = [key_of(c.user_id, c.device_id) for c in (first, second, third)]
    assert set(keys) <= set(await proxy.store.list_accounts())

    status, step = await first.request("DELETE", f"/_matrix/client/v3/devices/{second.device_id}")
    assert status == 401, step  # the password step first: nothing is forgotten yet
    assert keys[1] in await proxy.store.list_accounts()
    password = {"type": "m.login.password", "password": "pw", "session": step["session"]}
    await first.call("DELETE", f"/_matrix/client/v3/devices/{second.device_id}",
                     {"auth": password})
    await first.call("POST", "/_matrix/client/v3/delete_devices",
                     {"devices": [third.device_id], "auth": password})
    stored = await proxy.store.list_accounts()
    assert keys[0] in stored and keys[1] not in stored and keys[2] not in stored
    assert set(registry_of(proxy).accounts) == {keys[0]}


async def test_the_number_of_accounts_is_capped_and_logged(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An open-registration homeserver could make the proxy create keys and a background sync
    for every account anyone registers."""
    proxy = await start_e2ee_proxy(max_accounts=2)
    alice, bob, carol = await login_all(session, proxy.url, stub, "alice", "bob", "carol")
    assert len(await proxy.store.list_accounts()) == 2
    assert key_of(carol.user_id, carol.device_id) not in registry_of(proxy).accounts
    assert "maximum of 2 devices" in caplog.text
    room_id = await encrypted_room_of(alice, bob)
    await bob.invite(room_id, carol.user_id)
    await carol.join(room_id)
    status, body = await carol.send_raw(room_id, {"msgtype": "m.text", "body": "secret"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert "max_accounts" in body["error"]
