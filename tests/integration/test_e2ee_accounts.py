"""E2EE through the proxy, the accounts: unknown tokens resolved once, devices whose keys the
proxy does not hold refused for encrypted work only, logout forgets the keys, users isolated from
each other, and a restart on the same store keeps every device, token and room key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from e2eproxy.config import EncryptionConfig
from e2eproxy.store import AccountKey, SqliteStore
from e2eproxy.types import DeviceId, UserId
from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import PlainClient, encrypted_room_of, login_all
from tests.support.stub_homeserver import StubHomeserver
from tests.support.wire import assert_ciphertext_only, encryption_state, raw_messages


def key_of(client: PlainClient) -> AccountKey:
    return AccountKey(UserId(client.user_id), DeviceId(client.device_id))


def requests_with(stub: StubHomeserver, path_regex: str, token: str | None) -> int:
    bearer = f"Bearer {token}"
    return sum(1 for r in stub.requests_to(path_regex) if r.headers.get("Authorization") == bearer)


async def test_unknown_token_is_resolved_once_with_whoami(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    stub.register("dave", "pw")
    direct = stub.login("dave", "pw", device_id="DAVEDEV")  # no keys uploaded yet
    dave = PlainClient(session, proxy.url, direct.access_token)
    dave.user_id, dave.device_id = direct.user_id, direct.device_id
    for _ in range(3):
        await dave.sync()
    room_id = await dave.create_encrypted_room()
    await dave.send_text(room_id, "from a token the proxy had not seen")
    await dave.messages(room_id)
    assert requests_with(stub, r"/account/whoami$", dave.access_token) == 1
    # The device had no keys: the proxy created its crypto account for it.
    assert stub.keys.devices[(dave.user_id, dave.device_id)].device_keys is not None
    assert key_of(dave) in await proxy.store.list_accounts()
    assert_ciphertext_only(stub.raw_events(room_id))


async def test_device_with_foreign_keys_is_refused_for_encrypted_sends_only(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    erin_id = stub.register("erin", "pw")
    direct = stub.login("erin", "pw", device_id="ERINDEV")
    foreign_keys = {
        "user_id": erin_id,
        "device_id": "ERINDEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:ERINDEV": "Zm9yZWlnbiBjdXJ2ZQ", "ed25519:ERINDEV": "Zm9yZWlnbiBlZA"},
        "signatures": {erin_id: {"ed25519:ERINDEV": "c2ln"}},
    }
    stub.upload_keys(erin_id, "ERINDEV", {"device_keys": foreign_keys})
    encrypted = stub.create_room(erin_id, initial_state=[encryption_state()])
    plain = stub.create_room(erin_id)
    erin = PlainClient(session, proxy.url, direct.access_token)

    status, body = await erin.send_raw(encrypted, {"msgtype": "m.text", "body": "secret"})
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert "log in again" in body["error"].lower(), body
    assert raw_messages(stub.raw_events(encrypted)) == []

    content = {"msgtype": "m.text", "body": "plain is fine"}
    event_id = await erin.send(plain, content)
    (stored,) = raw_messages(stub.raw_events(plain))
    assert stored["event_id"] == event_id and stored["content"] == content
    await erin.sync()
    # The proxy never tried to replace the device's keys, nor adopted the device.
    assert stub.keys.devices[(erin_id, "ERINDEV")].device_keys == foreign_keys
    assert requests_with(stub, r"/keys/upload$", direct.access_token) == 0
    assert AccountKey(UserId(erin_id), DeviceId("ERINDEV")) not in await proxy.store.list_accounts()


async def test_logout_removes_the_account_from_the_store(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy()
    (alice,) = await login_all(session, proxy.url, stub, "alice")
    other = PlainClient(session, proxy.url)
    await other.login("alice")
    assert await proxy.store.load_snapshot(key_of(alice)) is not None
    assert {key_of(alice), key_of(other)} <= set(await proxy.store.list_accounts())
    await alice.logout()
    assert key_of(alice) not in await proxy.store.list_accounts()
    assert await proxy.store.load_snapshot(key_of(alice)) is None
    # Only that device: the user's other device keeps its keys.
    assert key_of(other) in await proxy.store.list_accounts()
    assert await proxy.store.load_snapshot(key_of(other)) is not None
    status, _ = await alice.request("GET", "/_matrix/client/v3/sync")
    assert status == 401


async def test_users_are_isolated(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy = await start_e2ee_proxy(encryption=EncryptionConfig(missing_key_wait=0.2))
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await alice.create_encrypted_room()
    secret = "only alice may read this"
    event_id = await alice.send_text(room_id, secret)
    assert (await alice.event(room_id, event_id))["content"]["body"] == secret
    await alice.invite(room_id, bob.user_id)
    await bob.join(room_id)

    seen = await bob.wait_for_event(room_id, event_id)
    answers: list[Any] = [
        seen,
        await bob.messages(room_id),
        await bob.event(room_id, event_id),
        await bob.context(room_id, event_id),
    ]
    for answer in answers:
        assert secret not in json.dumps(answer), answer
    assert seen["content"]["msgtype"] == "m.notice"
    assert (await bob.event(room_id, event_id))["content"]["msgtype"] == "m.notice"

    store = proxy.store
    assert await store.count_inbound_group_sessions(key_of(alice)) >= 1
    assert await store.count_inbound_group_sessions(key_of(bob)) == 0
    alice_keys = stub.keys.devices[(alice.user_id, alice.device_id)].device_keys
    bob_keys = stub.keys.devices[(bob.user_id, bob.device_id)].device_keys
    assert alice_keys is not None and bob_keys is not None
    assert set(alice_keys["keys"].values()).isdisjoint(bob_keys["keys"].values())


async def test_a_new_login_reads_what_the_users_earlier_devices_could(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A bot that logs in afresh on every start gets a new device each time; the proxy holds the
    earlier ones, so the new one reads the history they could (never another user's)."""
    proxy = await start_e2ee_proxy(encryption=EncryptionConfig(missing_key_wait=0.2))
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    room_id = await alice.create_encrypted_room(invite=[bob.user_id])
    await bob.join(room_id)
    before = await bob.send_text(room_id, "said before the second login")
    assert (await alice.wait_for_event(room_id, before))["content"]["body"].startswith("said")

    again = PlainClient(session, proxy.url)
    await again.login("alice")
    assert again.device_id != alice.device_id
    [seen] = [e for e in await again.messages(room_id) if e["event_id"] == before]
    assert seen["type"] == "m.room.message", seen
    assert seen["content"]["body"] == "said before the second login"
    assert await proxy.store.count_inbound_group_sessions(key_of(again)) >= 1
    # The copy is the new device's own: it outlives the first device's logout.
    await alice.logout()
    assert (await again.event(room_id, before))["content"]["body"].startswith("said")

    # Another user in the same proxy gets nothing of it.
    (carol,) = await login_all(session, proxy.url, stub, "carol")
    await bob.invite(room_id, carol.user_id)
    await carol.join(room_id)
    event = await carol.event(room_id, before)
    assert event["content"]["msgtype"] == "m.notice", event
    assert await proxy.store.count_inbound_group_sessions(key_of(carol)) == 0


async def _sqlite_store(path: Path) -> SqliteStore:
    store = SqliteStore(path, passphrase="integration", use_keyring=False, scrypt_n=2**10)
    await store.open()
    return store


async def test_restart_on_the_same_store_keeps_devices_tokens_and_history(
    stub: StubHomeserver,
    session: aiohttp.ClientSession,
    start_e2ee_proxy: StartE2EEProxy,
    tmp_path: Path,
) -> None:
    store = await _sqlite_store(tmp_path)
    try:
        first = await start_e2ee_proxy(store=store)
        alice, bob = await login_all(session, first.url, stub, "alice", "bob")
        room_id = await encrypted_room_of(alice, bob)
        before = await alice.send_text(room_id, "before the restart")
        await bob.wait_for_event(room_id, before)
        await first.stop()
    finally:
        await store.close()
    devices = {u: list(stub.accounts.users[u].devices) for u in (alice.user_id, bob.user_id)}
    keys = {
        u: stub.keys.devices[(u, c.device_id)].device_keys
        for u, c in ((alice.user_id, alice), (bob.user_id, bob))
    }
    uploads_before = len(stub.requests_to(r"/keys/upload$"))

    store = await _sqlite_store(tmp_path)
    try:
        second = await start_e2ee_proxy(store=store)
        alice.base_url = bob.base_url = second.url
        history = {e["event_id"]: e for e in await bob.messages(room_id)}
        assert history[before]["type"] == "m.room.message"
        assert history[before]["content"]["body"] == "before the restart"
        own = await alice.event(room_id, before)
        assert own["content"]["body"] == "before the restart"

        after = await alice.send_text(room_id, "after the restart")
        assert_ciphertext_only(stub.raw_events(room_id))
        seen = await bob.wait_for_event(room_id, after)
        assert seen["content"]["body"] == "after the restart"
        reply = await bob.send_text(room_id, "bob after the restart")
        assert (await alice.wait_for_event(room_id, reply))["content"]["body"] == (
            "bob after the restart"
        )
        await second.stop()
    finally:
        await store.close()
    assert {u: list(stub.accounts.users[u].devices) for u in devices} == devices
    for user_id, device_keys in keys.items():
        device_id = devices[user_id][0]
        assert stub.keys.devices[(user_id, device_id)].device_keys == device_keys
    assert not any(
        "device_keys" in (r.json or {}) for r in stub.requests_to(r"/keys/upload$")[uploads_before:]
    ), "new device keys were uploaded after the restart"


def test_expired_tokens_are_swept_not_kept_forever() -> None:
    """Refresh tokens rotate every few minutes: the registry must not keep every one it saw."""
    from types import SimpleNamespace
    from typing import cast

    from e2eproxy.crypto.settings import SharingStrategy
    from e2eproxy.proxy.registry import TOKEN_SWEEP_AT, AccountRegistry, TokenInfo
    from tests.support.timing import ManualTimer

    timer = ManualTimer()
    upstream = cast(Any, SimpleNamespace(base_url="http://hs.test"))
    registry = AccountRegistry(upstream, cast(Any, None), timer,
                               SharingStrategy.ALL_EXCEPT_BLACKLISTED)
    expired = timer.monotonic() - 1
    for number in range(TOKEN_SWEEP_AT):
        registry._remember(f"old{number}", TokenInfo("@u:hs", None, None, None, expired))
    live = TokenInfo("@u:hs", None, None, None, timer.monotonic() + 600)
    registry._remember("live", live)
    registry._remember("newer", live)
    assert registry.tokens == {"live": live, "newer": live}
