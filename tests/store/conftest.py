"""Fixtures for the store tests: one factory per backend, and record builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import vodozemac

from e2eproxy.crypto.changes import (
    AccountRecord,
    Changes,
    DeviceRecord,
    InboundGroupSessionRecord,
    OlmSessionRecord,
    OutboundGroupSessionRecord,
    ReplayRecord,
    RoomRecord,
    TrackedUserRecord,
    WithheldRecord,
)
from e2eproxy.crypto.clock import ManualClock
from e2eproxy.crypto.settings import EncryptionSettings, LocalTrust
from e2eproxy.protocol import api
from e2eproxy.store.base import AccountKey
from e2eproxy.store.memory import MemoryBackend
from e2eproxy.store.postgres import PostgresStore
from e2eproxy.store.records import RecordStore
from e2eproxy.store.sqlite import SqliteStore
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

# matrix-rust-sdk crates/matrix-sdk-crypto/src/file_encryption/key_export.rs, TEST_EXPORT
# (commit 64b12e0b808969c284c94f0ea239f37d6746d6e2), passphrase "1234".
TEST_EXPORT = """\
-----BEGIN MEGOLM SESSION DATA-----
Af7mGhlzQ+eGvHu93u0YXd3D/+vYMs3E7gQqOhuCtkvGAAAAASH7pEdWvFyAP1JUisAcpEo
Xke2Q7Kr9hVl/SCc6jXBNeJCZcrUbUV4D/tRQIl3E9L4fOk928YI1J+3z96qiH0uE7hpsCI
CkHKwjPU+0XTzFdIk1X8H7sZ+MD/2Sg/q3y8rtUjz7uEj4GUTnb+9SCOTVmJsRfqgUpM1CU
bDLytHf1JkohY4tWEgpsCc67xdzgodjr12qYrfg/zNm3LGpxlrffJknw4rk5QFTj4kMbqbD
ZZgDTni+HxRTDGge2J620lMOiznvXX+H09Rwruqx5aJvvaaKd86jWRpiO2oSFqHn4u5ONl9
41uzm62Sj0eIm6ZbA9NQs87jQw4LxsejhZVL+NdjIg80zVSBTWhTdo0DTnbFSNP4ReOiz0U
XosOF8A5T8Vdx2nvA0GXltfcHKVKQYh/LJAkNQ7P9UYL4ae/5TtQZkhB1KxCLTRWqADCl53
uBMGpG53EMgY6G6K2DEIOkcv7sdXQF5WpemiSWZqJRWj+cjfs9BpCTbkp/rszWFl2TniWpR
RqIbT2jORlN4rTvdtF0F4z1pqP4qWyR3sLNTkXm9CFRzWADNG0RDZKxbCoo6RPvtaCTfaHo
SwfvzBS6CjfAG+FOugpV48o7+XetaUUPZ6/tZSPhCdeV8eP9q5r0QwWeXFogzoNzWt4HYx9
MdXxzD+f0mtg5gzehrrEEARwI2bCvPpHxlt/Na9oW/GBpkjwR1LSKgg4CtpRyWngPjdEKpZ
GYW19pdjg0qdXNk/eqZsQTsNWVo6A
-----END MEGOLM SESSION DATA-----"""

ALICE = AccountKey(UserId("@alice:example.org"), DeviceId("ALICEDEV"))
BOB = AccountKey(UserId("@bob:example.org"), DeviceId("BOBDEV"))
ROOM = RoomId("!room:example.org")
StoreFactory = Callable[..., RecordStore]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[StoreFactory]:
    """A factory of opened store instances that share one storage (for lease tests)."""
    opened: list[RecordStore] = []
    memory = MemoryBackend()
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""

    async def sleep(seconds: float) -> None:  # waiting moves the fake clock, nothing more
        clock.advance(max(1, int(seconds * 1000)))

    async def make(**kwargs: object) -> RecordStore:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", sleep)
        if request.param == "memory":
            store = RecordStore(memory, **kwargs)  # type: ignore[arg-type]
        elif request.param == "postgres":
            store = PostgresStore(url, tmp_path, use_keyring=False, **kwargs)
        else:
            store = SqliteStore(tmp_path, use_keyring=False, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> RecordStore:
    return await make_store()  # type: ignore[no-any-return,misc]


def account_record() -> AccountRecord:
    account = vodozemac.Account()
    account.generate_one_time_keys(5)
    return AccountRecord(account, True, 1_700_000_000_000, 5)


def megolm_pair(advance: int = 0) -> tuple[vodozemac.GroupSession, vodozemac.InboundGroupSession]:
    outbound = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(outbound.session_key)
    for _ in range(advance):
        outbound.encrypt(b"x")
    return outbound, inbound


def inbound_record(
    inbound: vodozemac.InboundGroupSession,
    first_index: int = 0,
    imported: bool = False,
    room: RoomId = ROOM,
) -> InboundGroupSessionRecord:
    if first_index:
        exported = inbound.export_at(first_index)
        inbound = vodozemac.InboundGroupSession.import_session(exported)
    return InboundGroupSessionRecord(
        room_id=room,
        session_id=SessionId(inbound.session_id),
        sender_key="SENDERCURVE25519",
        signing_key="SENDERED25519",
        session=inbound,
        imported=imported,
        shared_history=False,
        first_known_index=inbound.first_known_index,
    )


def olm_record() -> OlmSessionRecord:
    alice, bob = vodozemac.Account(), vodozemac.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    session = alice.create_outbound_session(bob.curve25519_key, otk)
    return OlmSessionRecord(bob.curve25519_key.to_base64(), session.session_id, session, 1, 2, 3)


def full_changes() -> Changes:
    outbound, inbound = megolm_pair()
    bob = UserId("@bob:example.org")
    request = api.keys_query([bob])
    return Changes(
        account=account_record(),
        olm_sessions=[olm_record()],
        inbound_group_sessions=[inbound_record(inbound)],
        outbound_group_sessions=[
            OutboundGroupSessionRecord(
                ROOM,
                outbound,
                5,
                0,
                EncryptionSettings(),
                {bob: {DeviceId("BOBDEV"): 0}},
                {"req1"},
                False,
            )
        ],
        devices=[DeviceRecord(bob, DeviceId("BOBDEV"), {"keys": {}}, LocalTrust.VERIFIED, False)],
        tracked_users=[TrackedUserRecord(bob, True, True, 3)],
        rooms=[RoomRecord(ROOM, {"algorithm": "m.megolm.v1.aes-sha2"}, "shared", {bob: "join"})],
        replay_entries=[ReplayRecord(ROOM, SessionId(inbound.session_id), 0, "$ev", 123)],
        to_device_hashes=["ab" * 32],
        withheld=[WithheldRecord(ROOM, SessionId("S2"), "SK", "m.unverified", "no")],
        requests_added=[request],
    )


async def save_secrets(store: SqliteStore | PostgresStore, data_dir: Path) -> dict[str, bytes]:
    """Save a full batch, a txn answer and an access token into the open `store` (its key file in
    `data_dir`); returns what must never be found in the clear in what it wrote, by name."""
    changes = full_changes()
    pickle_key = store.backend.pickle_key
    await store.save(ALICE, changes, txns={"txn1": {"body": "meet me at noon"}})
    await store.put_secret(ALICE, "access_token", "syt_YWxpY2U_topsecret")
    igs = changes.inbound_group_sessions[0]
    exported = igs.session.export_at(0)
    assert exported is not None
    session_key = exported.to_base64()
    acct = changes.account.account  # type: ignore[union-attr]
    return {
        "access token": b"syt_YWxpY2U_topsecret",
        "message text": b"meet me at noon",
        "session key": session_key.encode(),
        "session key (raw)": session_key.encode()[8:40],
        "account pickle": acct.pickle(pickle_key).encode()[:40],
        "megolm pickle": igs.session.pickle(pickle_key).encode()[:40],
        "pickle key": pickle_key,
        "key file": (data_dir / "store.key").read_bytes(),
        "room id": b"!room:example.org",
        "user id": b"@alice:example.org",
        "localpart": b"alice",
        "device id": b"ALICEDEV",
        "identity key": acct.curve25519_key.to_base64().encode(),
        "json": b'"session_id"',
    }


class FakeKeyring:
    """A keyring backend in memory (never the developer's own keyring)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password
