"""The trust commands of the control interface, run against the real proxy app and the stub
homeserver: cross-signing bootstrap (and its password step), devices and their trust, local
trust, and a SAS between two accounts of the proxy, to-device and in a room."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from e2eproxy.control.protocol import ControlError, ControlRequest, Handler
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.proxy.app_keys import REGISTRY
from tests.integration.conftest import StartE2EEProxy
from tests.support.plain_client import PlainClient, encrypted_room_of, login_all
from tests.support.stub_homeserver import StubHomeserver
from tests.support.timing import until


class Ctl:
    """The commands as `e2eproxy ctl` calls them (without the socket in between)."""

    def __init__(self, table: dict[str, Handler]) -> None:
        self.table = table

    async def __call__(self, cmd: str, user: str, **args: Any) -> Any:
        return await self.table[cmd](ControlRequest(cmd, user, None, args))


@pytest.fixture
async def setup(stub: StubHomeserver, session: aiohttp.ClientSession,
                start_e2ee_proxy: StartE2EEProxy) -> tuple[Ctl, list[PlainClient]]:
    proxy = await start_e2ee_proxy()
    alice, bob = await login_all(session, proxy.url, stub, "alice", "bob")
    app = proxy.server.app
    assert app is not None
    return Ctl(trust_commands([app[REGISTRY]])), [alice, bob]


async def test_bootstrap_signs_this_device_and_asks_a_password_to_replace_keys(
    setup: tuple[Ctl, list[PlainClient]],
) -> None:
    ctl, (alice, _bob) = setup
    before = await ctl("cross-signing.status", alice.user_id)
    assert before["has_identity"] is False and before["device_signed"] is False
    made = await ctl("cross-signing.bootstrap", alice.user_id)

    async def signed() -> Any:
        status = await ctl("cross-signing.status", alice.user_id)
        return status if status["device_signed"] else None

    status = await until("this device signed", signed)
    assert status["master_key"] == made["master_key"] and status["trusted"]
    assert status["private_keys"] == {"master": True, "self_signing": True, "user_signing": True}
    own = await ctl("devices", alice.user_id)
    [me] = [d for d in own["devices"] if d["this_device"]]
    assert me["cross_signed"] and me["trust"] == "verified"

    # Replacing the keys needs the password (user-interactive auth), never guessed.
    with pytest.raises(ControlError) as refused:
        await ctl("cross-signing.bootstrap", alice.user_id)
    assert refused.value.code == "password_required"
    with pytest.raises(ControlError):
        await ctl("cross-signing.bootstrap", alice.user_id, password="wrong")
    again = await ctl("cross-signing.bootstrap", alice.user_id, password="pw")
    assert again["master_key"] != made["master_key"]


async def test_local_trust_and_device_listing(setup: tuple[Ctl, list[PlainClient]]) -> None:
    ctl, (alice, bob) = setup
    await encrypted_room_of(alice, bob)

    async def bobs_device() -> Any:
        listed = await ctl("devices", alice.user_id, user_id=bob.user_id)
        return next((d for d in listed["devices"] if d["device_id"] == bob.device_id), None)

    device = await until("bob's device known", bobs_device)
    assert device["trust"] == "unverified" and not device["cross_signed"]
    await ctl("trust", alice.user_id, user_id=bob.user_id, device_id=bob.device_id,
              trust="blacklisted")
    assert (await bobs_device())["trust"] == "blacklisted"
    await ctl("trust", alice.user_id, user_id=bob.user_id, device_id=bob.device_id,
              trust="unset")
    assert (await bobs_device())["trust"] == "unverified"
    with pytest.raises(ControlError) as unknown:
        await ctl("trust", alice.user_id, user_id=bob.user_id, device_id="NOPE", trust="verified")
    assert unknown.value.code == "unknown_device"


async def _sas(ctl: Ctl, alice: PlainClient, bob: PlainClient, started: str) -> None:
    """Bob accepts Alice's request; both compare the emoji and confirm."""
    async def bobs_flow() -> Any:
        flows = await ctl("verify.list", bob.user_id)
        return next((f for f in flows if not f["we_requested"] and f["phase"] == "requested"),
                    None)

    theirs = await until("bob sees the request", bobs_flow)
    await ctl("verify.accept", bob.user_id, id=theirs["id"])

    async def shown(user: str, flow_id: str) -> Any:
        details = await ctl("verify.show", user, id=flow_id)
        return details if details["emoji"] else None

    ours = await until("alice's emoji", lambda: shown(alice.user_id, started))
    seen = await until("bob's emoji", lambda: shown(bob.user_id, theirs["id"]))
    assert ours["emoji"] == seen["emoji"] and len(ours["emoji"]) == 7
    assert ours["decimals"] == seen["decimals"]
    await ctl("verify.confirm", alice.user_id, id=started)
    await ctl("verify.confirm", bob.user_id, id=theirs["id"])

    async def done(user: str, flow_id: str) -> Any:
        return (await ctl("verify.show", user, id=flow_id))["phase"] == "done"

    await until("alice done", lambda: done(alice.user_id, started))
    await until("bob done", lambda: done(bob.user_id, theirs["id"]))


async def test_sas_to_device_between_two_accounts(setup: tuple[Ctl, list[PlainClient]]) -> None:
    ctl, (alice, bob) = setup
    await encrypted_room_of(alice, bob)
    for user in (alice, bob):
        await ctl("cross-signing.bootstrap", user.user_id)

    async def known() -> Any:
        listed = await ctl("devices", alice.user_id, user_id=bob.user_id)
        return listed["identity"] and any(d["cross_signed"] for d in listed["devices"])

    await until("bob's identity known to alice", known)
    started = await ctl("verify.start", alice.user_id, user_id=bob.user_id,
                        device_id=bob.device_id)
    await _sas(ctl, alice, bob, started["id"])
    listed = await ctl("devices", alice.user_id, user_id=bob.user_id)
    assert listed["identity"]["verified"] is True
    assert [d["trust"] for d in listed["devices"]] == ["verified"]


async def test_sas_in_a_direct_room(setup: tuple[Ctl, list[PlainClient]]) -> None:
    ctl, (alice, bob) = setup
    await encrypted_room_of(alice, bob)
    for user in (alice, bob):
        await ctl("cross-signing.bootstrap", user.user_id)
        await user.sync()  # the proxy learns of the room and who is in it

    async def known() -> Any:
        listed = await ctl("devices", alice.user_id, user_id=bob.user_id)
        return listed["identity"]

    await until("bob's identity known to alice", known)
    started = await ctl("verify.start", alice.user_id, user_id=bob.user_id)
    flows = await ctl("verify.list", alice.user_id)
    assert [f["room_id"] for f in flows if f["id"] == started["id"]] != [None]
    await _sas(ctl, alice, bob, started["id"])
    assert (await ctl("devices", bob.user_id, user_id=alice.user_id))["identity"]["verified"]
