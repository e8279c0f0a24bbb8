"""Simplified sliding sync (MSC4186, on by default in Synapse) through the proxy: timelines come
back decrypted, the proxy's to-device keys never reach the plain client, and the keys still
arrive whether or not the client asks for the to-device and e2ee extensions."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.support.e2e_clients import Plain, plain_with_peer_room
from tests.support.nio_peer import PeerFactory
from tests.support.synapse import SynapseServer
from tests.support.wire import assert_ciphertext_only

pytestmark = pytest.mark.e2e

SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
TIMEOUT = 15.0


async def sliding_until_event(
    plain: Plain, room_id: str, event_id: str, extensions: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sliding-sync until `event_id` shows in the room's timeline; returns it and every
    to-device event the client was shown."""
    request: dict[str, Any] = {
        "lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 20, "required_state": []}},
    }
    if extensions:
        request["extensions"] = {"to_device": {"enabled": True}, "e2ee": {"enabled": True}}
    to_device: list[dict[str, Any]] = []
    params: dict[str, str] = {"timeout": "300"}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        answer = await plain.client.call("POST", SLIDING, request, params=params)
        params["pos"] = answer["pos"]
        ext = answer.get("extensions", {}).get("to_device", {})
        to_device.extend(ext.get("events", []))
        if "next_batch" in ext:
            request["extensions"]["to_device"]["since"] = ext["next_batch"]
        for event in answer.get("rooms", {}).get(room_id, {}).get("timeline", []):
            if event.get("event_id") == event_id and event.get("type") != "m.room.encrypted":
                return event, to_device
    raise AssertionError(f"{event_id} never came back decrypted through sliding sync")


@pytest.mark.parametrize("extensions", [True, False], ids=["with-extensions", "bare"])
async def test_sliding_sync_timelines_come_back_decrypted(
    session: aiohttp.ClientSession,
    proxy_url: str,
    synapse: SynapseServer,
    nio_peers: PeerFactory,
    localpart: str,
    extensions: bool,
) -> None:
    plain, peer, room_id = await plain_with_peer_room(
        session, proxy_url, synapse, nio_peers, localpart
    )
    await peer.wait_for_member(room_id, plain.user_id)
    sent = await peer.send_text(room_id, "read through sliding sync")
    event, to_device = await sliding_until_event(plain, room_id, sent, extensions)
    assert event["type"] == "m.room.message", event
    assert event["content"]["body"] == "read through sliding sync"
    assert event["sender"] == peer.user_id
    assert [e for e in to_device if e.get("type") == "m.room.encrypted"] == []
    assert_ciphertext_only(await synapse.room_messages(peer.access_token, room_id))
