"""The engine's key backup: sessions encrypted for upload decrypt back with the backup key
(the spec's curve25519-aes-sha2), restored sessions decrypt events and are marked as coming from
the backup, auth_data is signed by the device and the master key, the backup key is only taken
when it matches, and it travels between our own verified devices like the cross-signing keys."""

from __future__ import annotations

from e2eproxy.crypto.backup import BackupDecryptionKey, verify_auth_data
from e2eproxy.crypto.results import Decrypted
from tests.support.machine_pair import make_clients
from tests.unit.test_trust_engine import bootstrap, pump, sas

ROOM = "!backup:test"
VERSION = "1"


def test_uploaded_sessions_come_back_and_decrypt() -> None:
    server, (alice, bob) = make_clients("alice", "bob")
    server.create_room(ROOM, alice.user_id, [bob.user_id])
    for client in (alice, bob):
        client.tick()
    event = alice.send(ROOM, "backed up")
    bob.tick()
    key = BackupDecryptionKey.generate()
    backup = bob.machine.backup
    backup.use(VERSION, backup.signed_auth_data(key), key)
    record = bob.machine._inbound.get(ROOM, event["content"]["session_id"])
    assert record is not None
    body = backup.upload_body([record])
    [(room_id, room)] = body["rooms"].items()
    [(session_id, data)] = room["sessions"].items()
    assert room_id == ROOM and data["first_message_index"] == 0
    assert "session_key" not in str(data)  # only ciphertext goes to the server

    # A fresh device of bob's with only the backup key reads the event.
    _server2, (bob2,) = make_clients("bob/NEW")
    bob2.machine.backup.use(VERSION, backup.signed_auth_data(key), key)
    restored = bob2.machine.backup.decrypt(room_id, session_id, data)
    assert restored is not None and restored.imported and restored.backed_up
    assert bob2.machine.backup.import_sessions([restored]) == 1
    result = bob2.machine.decrypt_room_event(ROOM, event)
    assert isinstance(result, Decrypted) and result.event["content"]["body"] == "backed up"
    assert result.trust.value == "imported"
    # Not queued for upload again: it came from the backup.
    assert [r.backed_up for r in bob2.machine.take_changes().inbound_group_sessions] == [True]


def test_auth_data_is_signed_by_device_and_master_and_keys_must_match() -> None:
    _server, (alice,) = make_clients("alice")
    bootstrap(alice)
    key = BackupDecryptionKey.generate()
    auth = alice.machine.backup.signed_auth_data(key)
    device_key = alice.machine.identity_keys["ed25519"]
    assert verify_auth_data(auth, alice.user_id, f"ed25519:{alice.device_id}", device_key)
    master = alice.machine.trust.state.own.master
    assert master is not None
    assert verify_auth_data(auth, alice.user_id, master.key_id, master.public_key)
    alice.machine.backup.use(VERSION, auth, None)
    assert alice.machine.backup.import_key(BackupDecryptionKey.generate().to_base64()) is None
    assert alice.machine.backup.import_key(key.to_base64()) is not None
    assert alice.machine.backup.status() == {"version": VERSION, "has_key": True}
    alice.restart()
    assert alice.machine.backup.status() == {"version": VERSION, "has_key": True}


def test_the_backup_key_goes_to_a_verified_own_device() -> None:
    _server, (old, new) = make_clients("alice/OLD", "alice/NEW")
    bootstrap(old)
    key = BackupDecryptionKey.generate()
    auth = old.machine.backup.signed_auth_data(key)
    old.machine.backup.use(VERSION, auth, key)
    new.machine.backup.use(VERSION, auth, None)  # the version is known, its key is not
    pump(old, new)
    sas(new, old, new.machine.trust.start_to_device(old.user_id, old.device_id))
    pump(old, new)
    assert new.machine.backup.status() == {"version": VERSION, "has_key": True}
    assert new.machine.backup.decryption_key is not None
    assert new.machine.backup.decryption_key.to_bytes() == key.to_bytes()
