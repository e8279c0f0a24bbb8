"""Trust against the reference implementation: the proxy's cross-signing as matrix-sdk-crypto
(js-sdk's Rust crypto) sees it, a peer that shares only with cross-signed devices, emoji SAS
between the proxy (through its control commands) and the peer in both directions and in a room,
and an identity change of a verified peer."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from e2eproxy.control.protocol import ControlRequest
from e2eproxy.control.trust_commands import trust_commands
from e2eproxy.proxy.app_keys import REGISTRY
from tests.conftest import ServedProxy
from tests.interop.conftest import JsPeers, PlainLogin
from tests.support import timing
from tests.support.js_peer import JsPeer, js_room_with_plain, plain_reads
from tests.support.plain_client import PlainClient

pytestmark = [pytest.mark.e2e, pytest.mark.interop]
# Synapse and the js peer: a longer deadline, a slower poll.
until = functools.partial(timing.until, deadline_s=30.0, interval_s=0.2)


class Ctl:
    """The proxy's trust commands, as `e2eproxy ctl` runs them, for one user."""

    def __init__(self, proxy: ServedProxy, user: str) -> None:
        self.table = trust_commands([proxy.app[REGISTRY]])
        self.user = user

    async def __call__(self, cmd: str, **args: Any) -> Any:
        return await self.table[cmd](ControlRequest(cmd, self.user, None, args))


async def setup_pair(synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin,
                     localpart: str) -> tuple[PlainClient, JsPeer, Ctl, str]:
    js = await js_peers.user(f"{localpart}js")
    plain = await plain_login(f"{localpart}plain")
    room_id = await js_room_with_plain(js, plain)
    return plain, js, Ctl(synapse_proxy, plain.user_id), room_id


async def proxy_knows(ctl: Ctl, js: JsPeer, *, identity: bool) -> None:
    async def known() -> bool:
        listed = await ctl("devices", user_id=js.user_id)
        devices = [d["device_id"] for d in listed["devices"]]
        return js.device_id in devices and (not identity or listed["identity"] is not None)

    await until("the proxy knows the peer", known)


async def test_bootstrap_makes_the_proxys_device_signed_by_its_owner(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, room_id = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    before = await plain.send_text(room_id, "before cross-signing")
    unsigned = await js.wait_for_text(room_id, before, "before cross-signing")
    assert unsigned.shield is not None and unsigned.shield["reason"] == "UNSIGNED_DEVICE"

    await ctl("cross-signing.bootstrap")
    await peer_knows_proxy(js, plain)
    after = await plain.send_text(room_id, "after cross-signing")
    seen = await js.wait_for_text(room_id, after, "after cross-signing")
    assert seen.shield is not None and seen.shield["reason"] != "UNSIGNED_DEVICE", seen.shield


async def test_a_peer_that_shares_only_with_cross_signed_devices(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, room_id = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    await js.bootstrap_cross_signing()
    await js.set_isolation("only_signed")
    await ctl("cross-signing.bootstrap")
    await peer_knows_proxy(js, plain)
    from_js = await js.send_text(room_id, "only to cross-signed devices")
    await plain_reads(plain, room_id, from_js, "only to cross-signed devices", js)
    from_plain = await plain.send_text(room_id, "and back")
    await js.wait_for_text(room_id, from_plain, "and back")


async def peer_knows_proxy(js: JsPeer, plain: PlainClient) -> None:
    """The peer has fetched the proxy user's cross-signing keys (so a SAS can vouch for them)."""

    async def signed() -> bool:
        status = await js.verification_status(plain.user_id, plain.device_id)
        return bool(status["device"] and status["device"]["signed_by_owner"])

    await until("the peer sees the proxy's device signed by its owner", signed)


async def _compare_and_confirm(ctl: Ctl, js: JsPeer, proxy_flow: str, js_flow: str) -> None:
    emoji, decimals = await js.wait_sas(js_flow)

    async def shown() -> Any:
        details = await ctl("verify.show", id=proxy_flow)
        return details if details["emoji"] else None

    ours = await until("the proxy's emoji", shown)
    assert [e["symbol"] for e in ours["emoji"]] == [e[0] for e in emoji]
    assert ours["decimals"] == decimals
    await js.confirm_sas(js_flow)
    await ctl("verify.confirm", id=proxy_flow)

    async def done() -> bool:
        return bool((await ctl("verify.show", id=proxy_flow))["phase"] == "done")

    await until("the proxy's flow done", done)
    state = await js.wait_verification(js_flow, "Done")
    assert state["phase"] == "Done", state


async def both_cross_signed(ctl: Ctl, js: JsPeer, plain: PlainClient) -> None:
    """Both users bootstrap cross-signing, and each side has fetched the other's keys."""
    await js.bootstrap_cross_signing()
    await ctl("cross-signing.bootstrap")
    await proxy_knows(ctl, js, identity=True)
    await peer_knows_proxy(js, plain)


async def proxy_verifies_peer(ctl: Ctl, js: JsPeer) -> None:
    """A SAS the proxy requests, to the peer's device; the peer accepts (the proxy starts SAS by
    itself then), both compare and confirm."""
    started = await ctl("verify.start", user_id=js.user_id, device_id=js.device_id)

    async def incoming() -> Any:
        return next((f for f in await js.verifications() if not f["initiated_by_me"]), None)

    request = await until("the peer sees the request", incoming)
    await js.accept_verification(request["id"])
    await _compare_and_confirm(ctl, js, started["id"], request["id"])


async def _both_verified(ctl: Ctl, js: JsPeer, plain: PlainClient) -> None:
    listed = await ctl("devices", user_id=js.user_id)
    assert listed["identity"]["verified"] is True
    assert [d["trust"] for d in listed["devices"]] == ["verified"]

    async def peer_side() -> bool:
        status = await js.verification_status(plain.user_id, plain.device_id)
        return bool(status["user_verified"] and status["device"]["verified"])

    await until("the peer trusts the proxy's user and device", peer_side)


async def test_sas_started_by_the_proxy(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, _room = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    await both_cross_signed(ctl, js, plain)
    await proxy_verifies_peer(ctl, js)
    await _both_verified(ctl, js, plain)


async def test_sas_started_by_the_peer(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, _room = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    await both_cross_signed(ctl, js, plain)
    js_flow = await js.request_verification(plain.user_id, device_id=plain.device_id)

    async def incoming() -> Any:
        flows = await ctl("verify.list")
        return next((f for f in flows if not f["we_requested"]), None)

    request = await until("the proxy sees the request", incoming)
    assert request["id"] == js_flow and request["other_user"] == js.user_id
    await ctl("verify.accept", id=request["id"])
    await js.wait_verification(js_flow, "Ready")
    await js.start_sas(js_flow)
    await _compare_and_confirm(ctl, js, request["id"], js_flow)
    await _both_verified(ctl, js, plain)


async def test_sas_in_a_room_started_by_the_peer(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, room_id = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    await both_cross_signed(ctl, js, plain)
    js_flow = await js.request_verification(plain.user_id, room_id=room_id)

    async def incoming() -> Any:
        await plain.sync(timeout_ms=200)  # the request is a room event: any sync carries it
        flows = await ctl("verify.list")
        return next((f for f in flows if f["room_id"] == room_id), None)

    request = await until("the proxy sees the in-room request", incoming)
    await ctl("verify.accept", id=request["id"])
    await js.wait_verification(js_flow, "Ready")
    await js.start_sas(js_flow)
    await _compare_and_confirm(ctl, js, request["id"], js_flow)
    listed = await ctl("devices", user_id=js.user_id)
    assert listed["identity"]["verified"] is True


async def test_an_identity_change_of_a_verified_peer_withholds_keys_until_accepted(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    plain, js, ctl, room_id = await setup_pair(synapse_proxy, js_peers, plain_login, localpart)
    await both_cross_signed(ctl, js, plain)
    await proxy_verifies_peer(ctl, js)

    await js.bootstrap_cross_signing(reset=True)  # the peer's user resets their identity

    async def violation() -> bool:
        identity = (await ctl("devices", user_id=js.user_id))["identity"]
        return bool(identity and identity["verification_violation"])

    await until("the proxy reports the change", violation)
    withheld = await plain.send_text(room_id, "not for a changed identity")
    seen = await js.wait_for_event(room_id, event_id=withheld, timeout_ms=5000)
    assert seen.decryption_failure is not None, seen
    await ctl("trust.accept-identity-change", user_id=js.user_id)
    shared = await plain.send_text(room_id, "accepted")
    await js.wait_for_text(room_id, shared, "accepted")


async def test_an_identity_made_by_element_signs_the_proxy_after_own_verification(
    synapse_proxy: ServedProxy, js_peers: JsPeers, plain_login: PlainLogin, localpart: str
) -> None:
    """The user's other device (the reference client) made their identity: the proxy's device
    verifies with it, receives the cross-signing keys, and signs itself."""
    plain = await plain_login(f"{localpart}me")
    element = await js_peers.login(f"{localpart}me", f"{localpart}me-password")
    await element.bootstrap_cross_signing()
    ctl = Ctl(synapse_proxy, plain.user_id)

    async def identity_seen() -> Any:
        status = await ctl("cross-signing.status")
        return status if status["has_identity"] else None

    status = await until("the proxy sees its user's identity", identity_seen)
    assert status["private_keys"] == {"master": False, "self_signing": False,
                                      "user_signing": False}
    assert not status["device_signed"]
    started = await ctl("verify.start", user_id=plain.user_id, device_id=element.device_id)

    async def incoming() -> Any:
        return next((f for f in await element.verifications() if not f["initiated_by_me"]), None)

    request = await until("the other device sees the request", incoming)
    await element.accept_verification(request["id"])
    await _compare_and_confirm(ctl, element, started["id"], request["id"])

    async def signed() -> Any:
        status = await ctl("cross-signing.status")
        ready = status["device_signed"] and status["private_keys"]["self_signing"]
        return status if ready else None

    status = await until("the proxy's device signed with the received keys", signed)
    assert status["trusted"]

    async def element_sees_it() -> bool:
        seen = await element.verification_status(plain.user_id, plain.device_id)
        return bool(seen["device"] and seen["device"]["signed_by_owner"])

    await until("the other device sees the proxy's device cross-signed", element_sees_it)
