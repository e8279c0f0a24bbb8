"""Room key export/import through the store: rust-sdk's vector, matrix-nio both ways, merging."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import vodozemac

from e2eproxy import key_export as kx
from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import StoreError
from e2eproxy.store.records import RecordStore
from e2eproxy.store.room_keys import export_room_keys, import_room_keys

from .conftest import ALICE, BOB, ROOM, TEST_EXPORT, account_record, inbound_record, megolm_pair

FAST = kx.MIN_EXPORT_ROUNDS


async def _with_account(store: RecordStore, *accounts: object) -> None:
    for account in accounts or (ALICE,):
        await store.save(account, Changes(account=account_record()))  # type: ignore[arg-type]


async def test_rust_sdk_export_imports(store: RecordStore) -> None:
    await _with_account(store)
    seen: list[tuple[int, int]] = []
    imported, total = await import_room_keys(
        store, ALICE.user_id, TEST_EXPORT, "1234", lambda d, t: seen.append((d, t))
    )
    assert imported == total > 0
    assert seen[-1] == (total, total)
    entries = kx.decrypt_key_export(TEST_EXPORT, "1234")
    ids = [(e["room_id"], e["session_id"]) for e in entries]
    found, _ = await store.load_inbound_group_sessions(ALICE, ids)  # type: ignore[arg-type]
    assert len(found) == total and all(r.imported for r in found)
    again = await import_room_keys(store, ALICE.user_id, TEST_EXPORT, "1234")
    assert again == (0, total), "nothing better the second time"


async def test_export_then_import_elsewhere_decrypts(store: RecordStore) -> None:
    await _with_account(store, ALICE, BOB)
    outbound, inbound = megolm_pair()
    message = outbound.encrypt(b"secret history")
    await store.save(ALICE, Changes(inbound_group_sessions=[inbound_record(inbound)]))
    text = await export_room_keys(store, ALICE.user_id, "pw", rounds=FAST)
    assert await import_room_keys(store, BOB.user_id, text, "pw") == (1, 1)
    [record], _ = await store.load_inbound_group_sessions(BOB, [(ROOM, outbound.session_id)])
    assert record.imported and record.signing_key == "SENDERED25519"
    assert record.session.decrypt(message).plaintext == b"secret history"


async def test_matrix_nio_imports_our_export(store: RecordStore, tmp_path: Path) -> None:
    from nio.crypto.olm_machine import Olm

    await _with_account(store)
    outbound, inbound = megolm_pair()
    message = outbound.encrypt(b"for nio")
    await store.save(ALICE, Changes(inbound_group_sessions=[inbound_record(inbound)]))
    path = tmp_path / "keys.txt"
    path.write_text(await export_room_keys(store, ALICE.user_id, "pw", rounds=FAST))
    [session] = Olm.import_keys_static(str(path), "pw")
    assert (session.room_id, session.id, session.ed25519) == (
        ROOM,
        outbound.session_id,
        "SENDERED25519",
    )
    assert session._session.decrypt(message).plaintext == b"for nio"


async def test_we_import_matrix_nio_export(store: RecordStore, tmp_path: Path) -> None:
    from nio.crypto.olm_machine import Olm
    from nio.crypto.sessions import InboundGroupSession

    await _with_account(store)
    outbound = vodozemac.GroupSession()
    nio_session = InboundGroupSession(outbound.session_key.to_base64(), "NIOED", "NIOCURVE", ROOM)
    message = outbound.encrypt(b"from nio")
    path = tmp_path / "keys.txt"
    Olm.export_keys_static([nio_session], str(path), "pw", count=FAST)
    assert await import_room_keys(store, ALICE.user_id, path.read_text(), "pw") == (1, 1)
    [record], _ = await store.load_inbound_group_sessions(ALICE, [(ROOM, outbound.session_id)])
    assert (record.sender_key, record.signing_key) == ("NIOCURVE", "NIOED")
    assert record.session.decrypt(message).plaintext == b"from nio"


async def test_merge_takes_lower_connected_index_and_keeps_trust(store: RecordStore) -> None:
    await _with_account(store)
    _outbound, inbound = megolm_pair(advance=8)
    direct = inbound_record(inbound, first_index=5)
    await store.save(ALICE, Changes(inbound_group_sessions=[direct]))
    worse = kx.encrypt_key_export([_entry(inbound, 7)], "pw", rounds=FAST)
    assert await import_room_keys(store, ALICE.user_id, worse, "pw") == (0, 1)
    better = kx.encrypt_key_export([_entry(inbound, 2)], "pw", rounds=FAST)
    assert await import_room_keys(store, ALICE.user_id, better, "pw") == (1, 1)
    [record], _ = await store.load_inbound_group_sessions(ALICE, [(ROOM, direct.session_id)])
    assert record.first_known_index == 2
    assert not record.imported, "a proven-connected copy keeps the direct key's trust"
    assert record.signing_key == "SENDERED25519"


async def test_unconnected_copy_with_same_id_is_refused(store: RecordStore) -> None:
    await _with_account(store)
    _, inbound = megolm_pair(advance=8)
    await store.save(ALICE, Changes(inbound_group_sessions=[inbound_record(inbound, 5)]))
    forged = _entry(inbound, 0)
    raw = bytearray(base64.b64decode(forged["session_key"] + "=="))
    raw[5:37] = bytes(32)  # another ratchet, same signing key, so the same session id
    forged["session_key"] = base64.b64encode(bytes(raw)).decode().rstrip("=")
    text = kx.encrypt_key_export([forged], "pw", rounds=FAST)
    assert await import_room_keys(store, ALICE.user_id, text, "pw") == (0, 1)
    [record], _ = await store.load_inbound_group_sessions(ALICE, [(ROOM, inbound.session_id)])
    assert record.first_known_index == 5


@pytest.mark.parametrize(
    ("passphrase", "mangle", "error"),
    [
        ("wrong", lambda t: t, kx.BadMac),
        ("pw", lambda t: t.replace(kx.FOOTER, ""), kx.NotArmored),
        ("pw", lambda t: "\n".join([*t.splitlines()[:2], kx.FOOTER]), kx.KeyExportError),
    ],
)
async def test_bad_files_import_nothing(
    store: RecordStore, passphrase: str, mangle: object, error: type[Exception]
) -> None:
    await _with_account(store)
    _, inbound = megolm_pair()
    text = kx.encrypt_key_export([_entry(inbound, 0)], "pw", rounds=FAST)
    with pytest.raises(error):
        await import_room_keys(store, ALICE.user_id, mangle(text), passphrase)  # type: ignore[operator]
    assert await store.count_inbound_group_sessions(ALICE) == 0


async def test_a_bad_entry_is_skipped_and_the_others_imported(
    store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    """As matrix-rust-sdk: one entry with a bad key, or a key of another session, costs that
    entry only, with a warning naming it (and no key material)."""
    await _with_account(store)
    good = _entry(megolm_pair()[1], 0)
    bad = dict(_entry(megolm_pair()[1], 0), session_key="AAAA")
    other = dict(_entry(megolm_pair()[1], 0), session_id=good["session_id"])
    text = kx.encrypt_key_export([bad, good, other], "pw", rounds=FAST)
    assert await import_room_keys(store, ALICE.user_id, text, "pw") == (1, 3)
    assert await store.count_inbound_group_sessions(ALICE) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("entry 0" in w for w in warnings) and any("entry 2" in w for w in warnings)
    assert not any(str(bad["session_key"]) in w or str(other["session_key"]) in w
                   for w in warnings)


async def test_unknown_user_is_an_error(store: RecordStore) -> None:
    with pytest.raises(StoreError, match="no account"):
        await export_room_keys(store, "@nobody:x", "pw")


def _entry(inbound: vodozemac.InboundGroupSession, index: int) -> dict[str, object]:
    key = inbound.export_at(max(index, inbound.first_known_index))
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": ROOM,
        "sender_key": "OTHERCURVE",
        "session_id": inbound.session_id,
        "session_key": key.to_base64(),
        "sender_claimed_keys": {"ed25519": "OTHERED"},
        "forwarding_curve25519_key_chain": [],
    }


def test_entry_helper_round_trips() -> None:
    _, inbound = megolm_pair()
    assert json.loads(json.dumps(_entry(inbound, 0)))["session_id"] == inbound.session_id
