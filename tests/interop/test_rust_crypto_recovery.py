"""Backup and recovery against the reference implementation on Synapse: a user whose secret
storage and key backup Element (matrix-js-sdk with rust-sdk's crypto) made recovers through the
proxy and reads history from before the proxy's device existed; the reference client restores
from a backup the proxy wrote; a wiped proxy recovers its history; no secret on the server."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from e2eproxy.control.protocol import ControlRequest
from e2eproxy.control.recovery_commands import recovery_commands
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.proxy.app_keys import REGISTRY
from tests.conftest import ServedProxy, StartSynapseProxy
from tests.interop.conftest import JsPeers, PlainLogin
from tests.support.js_peer import JsPeer
from tests.support.plain_client import PlainClient
from tests.support.synapse import SynapseServer
from tests.support.timing import until

pytestmark = [pytest.mark.e2e, pytest.mark.interop]
DEADLINE_S = 60.0


class Ctl:
    def __init__(self, proxy: ServedProxy, user: str) -> None:
        registries = [proxy.app[REGISTRY]]
        self.table = {**trust_commands(registries), **recovery_commands(registries)}
        self.user = user

    async def __call__(self, cmd: str, **args: Any) -> Any:
        return await self.table[cmd](ControlRequest(cmd, self.user, None, args))


async def backed_up_sessions(synapse: SynapseServer, token: str) -> set[str]:
    """The session ids the server's current key backup of the token's user holds."""
    version = await synapse.client_request("GET", "/_matrix/client/v3/room_keys/version", token)
    keys = await synapse.client_request(
        "GET", f"/_matrix/client/v3/room_keys/keys?version={quote(version['version'])}", token)
    return {s for room in keys["rooms"].values() for s in room["sessions"]}


async def history(plain: PlainClient, room_id: str) -> list[str]:
    return [e["content"].get("body") for e in reversed(await plain.messages(room_id))
            if e["type"] == "m.room.message" and "org.e2eproxy.undecryptable" not in e["content"]]


async def test_recovery_made_by_element_gives_the_proxy_the_old_history(
    synapse: SynapseServer, synapse_proxy: ServedProxy, js_peers: JsPeers,
    session: aiohttp.ClientSession, localpart: str,
) -> None:
    # The user's Element (a js device of the same user) sets up recovery first.
    plain_name = f"{localpart}me"
    await synapse.register(plain_name, password=f"{plain_name}-password")
    element = await js_peers.login(plain_name, f"{plain_name}-password")
    made = await element.setup_recovery()
    friend = await js_peers.user(f"{localpart}friend")
    room_id = await friend.create_encrypted_room([element.user_id])
    await element.join(room_id)
    await friend.wait_for_member(room_id, element.user_id)
    sent = [await friend.send_text(room_id, f"before the proxy {i}") for i in range(2)]
    megolm = (await element.wait_for_text(room_id, sent[-1], "before the proxy 1")).session_id

    async def uploaded() -> bool:
        return megolm in await backed_up_sessions(synapse, element.access_token)

    await until("Element backed the room key up", uploaded, DEADLINE_S)

    # Now the plain client logs in through the proxy: a new device, no keys.
    client = await _login_through(session, synapse_proxy, plain_name)
    assert await history(client, room_id) == []
    ctl = Ctl(synapse_proxy, client.user_id)
    done = await ctl("recovery.recover", recovery_key=made["recovery_key"])
    assert done["backup_version"] == made["backup_version"]

    async def readable() -> bool:
        return await history(client, room_id) == ["before the proxy 0", "before the proxy 1"]

    await until("the old history readable through the proxy", readable, DEADLINE_S)

    async def signed() -> bool:
        status = await element.verification_status(client.user_id, client.device_id)
        return bool(status["device"] and status["device"]["signed_by_owner"])

    await until("Element sees the proxy's device signed by its owner", signed, DEADLINE_S)


async def _login_through(session: aiohttp.ClientSession, proxy: ServedProxy,
                         localpart: str) -> PlainClient:
    client = PlainClient(session, proxy.url)
    await client.login(localpart, f"{localpart}-password")
    return client


async def _proxy_with_backup(synapse: SynapseServer, proxy: ServedProxy, js_peers: JsPeers,
                             plain_login: PlainLogin, localpart: str
                             ) -> tuple[PlainClient, JsPeer, str, str, Ctl]:
    """The plain client's room with a js friend, messages in it, and recovery set up by the
    proxy with every room key backed up. Returns (plain, friend, room, recovery key, ctl)."""
    plain = await plain_login(f"{localpart}me")
    friend = await js_peers.user(f"{localpart}friend")
    room_id = await friend.create_encrypted_room([plain.user_id])
    await plain.sync_until(lambda: any(room_id in b.get("rooms", {}).get("invite", {})
                                       for b in plain.sync_bodies), "the invite")
    await plain.join(room_id)
    await friend.wait_for_member(room_id, plain.user_id)
    for i in range(2):
        await friend.send_text(room_id, f"history {i}")
    await plain.send_text(room_id, "history 2")
    await until("the proxy read the history",
                lambda: _equal(history(plain, room_id), ["history 0", "history 1", "history 2"]),
                DEADLINE_S)
    ctl = Ctl(proxy, plain.user_id)
    made = await ctl("recovery.enable")

    async def all_up() -> bool:
        return (await ctl("recovery.status"))["backup"]["to_upload"] == 0

    await until("every room key backed up", all_up, DEADLINE_S)
    return plain, friend, room_id, made["recovery_key"], ctl


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_element_restores_from_a_backup_the_proxy_wrote(
    synapse: SynapseServer, synapse_proxy: ServedProxy, js_peers: JsPeers,
    plain_login: PlainLogin, localpart: str,
) -> None:
    plain, _friend, room_id, recovery_key, _ctl = await _proxy_with_backup(
        synapse, synapse_proxy, js_peers, plain_login, localpart)
    element = await js_peers.login(f"{localpart}me", f"{localpart}me-password")
    restored = await element.restore_from_backup(recovery_key)
    assert restored["imported"] >= 2, restored
    events = await element.messages(room_id)
    bodies = [e.body for e in reversed(events) if e.type == "m.room.message"
              and e.decryption_failure is None]
    assert bodies == ["history 0", "history 1", "history 2"], events

    # Nothing secret on the server in the clear: account data and the backup hold ciphertext.
    ctl_account = synapse_proxy.app[REGISTRY].accounts
    [account] = [a for a in ctl_account.values() if a.user_id == plain.user_id]
    secrets = [recovery_key, recovery_key.replace(" ", ""),
               *account.machine.trust.state.own.secrets().values(),
               account.machine.backup.secret()]
    on_server = ""
    for name in ("m.cross_signing.master", "m.cross_signing.self_signing",
                 "m.cross_signing.user_signing", "m.megolm_backup.v1"):
        path = (f"/_matrix/client/v3/user/{quote(plain.user_id)}/account_data/{name}")
        on_server += json.dumps(await synapse.client_request("GET", path, element.access_token))
    version = await synapse.client_request("GET", "/_matrix/client/v3/room_keys/version",
                                           element.access_token)
    on_server += json.dumps(await synapse.client_request(
        "GET", f"/_matrix/client/v3/room_keys/keys?version={version['version']}",
        element.access_token))
    for secret in secrets:
        assert secret and secret not in on_server


async def test_a_wiped_proxy_recovers_its_history(
    synapse: SynapseServer, synapse_proxy: ServedProxy, start_synapse_proxy: StartSynapseProxy,
    js_peers: JsPeers, plain_login: PlainLogin, session: aiohttp.ClientSession, localpart: str,
) -> None:
    _plain, _friend, room_id, recovery_key, _ctl = await _proxy_with_backup(
        synapse, synapse_proxy, js_peers, plain_login, localpart)
    wiped = await start_synapse_proxy("wiped-data-dir")
    again = await _login_through(session, wiped, f"{localpart}me")
    assert await history(again, room_id) == []
    await Ctl(wiped, again.user_id)("recovery.recover", recovery_key=recovery_key)
    await until("the history back",
                lambda: _equal(history(again, room_id), ["history 0", "history 1", "history 2"]),
                DEADLINE_S)
