"""A new device of a user reads with the room keys of the user's earlier devices in the store; a
key none of them has is not searched for again on every read, until room keys are saved for
one of them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import vodozemac

from e2eproxy.crypto.changes import Changes, InboundGroupSessionRecord, ReplayRecord
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.results import Decrypted, DecryptionFailure
from e2eproxy.protocol.rewrite import event_slots
from e2eproxy.proxy import decrypt_io
from e2eproxy.proxy.account import HOMESERVER_SECRET, Account
from e2eproxy.proxy.decrypt_io import decrypt_slots
from e2eproxy.store import AccountKey, MemoryStore
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId
from tests.support.timing import ManualTimer

ROOM = RoomId("!room:example.org")
HOMESERVER = "https://example.org"
OLD = AccountKey(UserId("@alice:example.org"), DeviceId("OLD"))
NEW = AccountKey(UserId("@alice:example.org"), DeviceId("NEW"))


class CountingStore(MemoryStore):
    """Counts the inbound session reads of each account."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[AccountKey, int] = {}

    async def load_inbound_group_sessions(
        self, account: AccountKey, ids: Sequence[tuple[RoomId, SessionId]]
    ) -> tuple[list[InboundGroupSessionRecord], list[ReplayRecord]]:
        self.reads[account] = self.reads.get(account, 0) + 1
        return await super().load_inbound_group_sessions(account, ids)


def _encrypted_event(group: vodozemac.GroupSession, body: str) -> dict[str, Any]:
    payload = {"type": "m.room.message", "room_id": ROOM,
               "content": {"msgtype": "m.text", "body": body}}
    ciphertext = group.encrypt(json.dumps(payload).encode()).to_base64()
    return {
        "type": "m.room.encrypted", "sender": "@bob:example.org", "event_id": "$e1",
        "origin_server_ts": 1, "room_id": ROOM,
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "session_id": group.session_id,
                    "ciphertext": ciphertext, "sender_key": "bobkey", "device_id": "BOBDEV"},
    }


async def _read(account: Account, event: dict[str, Any]) -> Decrypted | DecryptionFailure:
    [result] = await decrypt_slots(account, list(event_slots(ROOM, json.loads(json.dumps(event)))))
    return result


async def test_a_key_no_sibling_has_is_searched_for_again_only_once_keys_are_saved() -> None:
    store = CountingStore()
    await store.open()
    timer = ManualTimer()
    for key in (OLD, NEW):
        await store.put_secret(key, HOMESERVER_SECRET, HOMESERVER)
    account = Account(key=NEW, machine=OlmMachine(NEW.user_id, NEW.device_id, timer),
                      store=store, access_token="token", homeserver=HOMESERVER, timer=timer)
    group = vodozemac.GroupSession()
    session_key = group.session_key  # from message index 0
    event = _encrypted_event(group, "said to the old device only")

    assert isinstance(await _read(account, event), DecryptionFailure)
    assert store.reads[OLD] == 1
    for _ in range(3):
        assert isinstance(await _read(account, event), DecryptionFailure)
    assert store.reads[OLD] == 1, "the old device was not asked again for the same key"

    # The old device gets the key (its sync saves it): the next read finds and copies it.
    inbound = vodozemac.InboundGroupSession(session_key)
    await store.save(OLD, Changes(inbound_group_sessions=[InboundGroupSessionRecord(
        ROOM, SessionId(group.session_id), "bobkey", "bobed", inbound, imported=False,
        shared_history=False, first_known_index=0,
    )]))
    result = await _read(account, event)
    assert isinstance(result, Decrypted), result
    assert result.event["content"]["body"] == "said to the old device only"
    assert store.reads[OLD] == 2


async def test_a_miss_is_forgotten_after_a_while() -> None:
    """Another instance on the same store may save the old device's keys unseen by this one."""
    store = CountingStore()
    await store.open()
    timer = ManualTimer()
    for key in (OLD, NEW):
        await store.put_secret(key, HOMESERVER_SECRET, HOMESERVER)
    account = Account(key=NEW, machine=OlmMachine(NEW.user_id, NEW.device_id, timer),
                      store=store, access_token="token", homeserver=HOMESERVER, timer=timer)
    event = _encrypted_event(vodozemac.GroupSession(), "never shared")
    await _read(account, event)
    await _read(account, event)
    assert store.reads[OLD] == 1
    timer.advance(getattr(decrypt_io, "SIBLING_MISS_TTL_S", 300.0))
    await _read(account, event)
    assert store.reads[OLD] == 2
