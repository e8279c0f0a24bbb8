"""Membership changes in an encrypted room behind the proxy: a member who leaves gets no key for
what is said afterwards; a member's new device gets the keys for what is said after it appeared."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support.e2e_clients import plain_login
from tests.support.nio_peer import NioPeer, PeerFactory
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

pytestmark = pytest.mark.e2e


async def test_member_who_left_gets_no_key_for_later_messages(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
) -> None:
    plain = await plain_login(session, proxy_url, synapse, f"{localpart}plain")
    bob = await nio_peers(f"{localpart}bob")
    carol = await nio_peers(f"{localpart}carol")
    room_id = await plain.create_encrypted_room(invite=[bob.user_id, carol.user_id])
    await bob.join(room_id)
    await carol.join(room_id)

    before = await plain.send_text(room_id, "carol is still here")
    await bob.wait_for_bodies(room_id, ["carol is still here"])
    [seen] = await carol.wait_for_bodies(room_id, ["carol is still here"])
    assert seen.event_id == before and seen.session_id is not None
    first_session = seen.session_id

    await carol.leave(room_id)
    # The proxy learns of the leave the way any client does: from a sync that passes it.
    await plain.sync_until(
        lambda: any(
            e["type"] == "m.room.member"
            and e.get("state_key") == carol.user_id
            and e["content"].get("membership") == "leave"
            for e in plain.timeline.get(room_id, [])
        ),
        "carol's leave",
    )
    after = await plain.send_text(room_id, "carol has gone")
    [for_bob] = await bob.wait_for_bodies(room_id, ["carol has gone"])
    assert for_bob.event_id == after

    raw = await synapse.room_messages(bob.access_token, room_id)
    encrypted = {e["event_id"]: e["content"] for e in assert_ciphertext_only(raw)}
    assert set(encrypted) == {before, after}
    new_session = encrypted[after]["session_id"]
    assert new_session != first_session, "the room key was not rotated when carol left"
    # The key shares went out before the event was sent; let carol's device take whatever
    # to-device traffic is waiting for it.
    for _ in range(3):
        await carol.sync_once(timeout_ms=0)
    assert carol.has_room_key(room_id, first_session)
    assert not carol.has_room_key(room_id, new_session), "carol got the key after leaving"


async def test_new_device_of_a_member_reads_later_messages(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
    tmp_path: Path,
) -> None:
    plain = await plain_login(session, proxy_url, synapse, f"{localpart}plain")
    bob = await nio_peers(f"{localpart}bob")
    room_id = await plain.create_encrypted_room(invite=[bob.user_id])
    await bob.join(room_id)
    first = await plain.send_text(room_id, "to bob's first device")
    await bob.wait_for_bodies(room_id, ["to bob's first device"])
    await plain.sync_once(timeout_ms=0)  # a since token from before bob's second device
    # Bob's join already put him in device_lists.changed: only a change seen from here on counts.
    plain.devices_changed.clear()

    bob2 = await NioPeer.login(
        synapse.base_url, bob.user_id, f"{localpart}bob-password", tmp_path / "bob-second"
    )
    try:
        assert bob2.device_id != bob.device_id
        # The device list change reaches the proxy through the client's sync.
        await plain.sync_until(lambda: bob.user_id in plain.devices_changed, "bob's new device")
        later = await plain.send_text(room_id, "to both of bob's devices")
        [on_second] = await bob2.wait_for_bodies(room_id, ["to both of bob's devices"])
        assert (on_second.event_id, on_second.encrypted) == (later, True)
        [on_first] = await bob.wait_for_bodies(room_id, ["to both of bob's devices"])
        assert on_first.event_id == later
    finally:
        await bob2.close()

    raw = await synapse.room_messages(bob.access_token, room_id)
    assert [e["event_id"] for e in assert_ciphertext_only(raw)] == [later, first]
