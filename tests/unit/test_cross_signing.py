"""Cross-signing keys, upload and signature bodies, identities from /keys/query, and pinning."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import vodozemac

from e2eproxy.crypto.cross_signing import (
    MASTER,
    SELF_SIGNING,
    USER_SIGNING,
    CrossSigningError,
    CrossSigningKey,
    CrossSigningKeys,
    InvalidCrossSigningKey,
    InvalidIdentitySignature,
    UserIdentity,
    identities_from_query,
    identity_from_query,
    sign_device,
    sign_user,
    signatures_upload_body,
)
from e2eproxy.crypto.identity_pins import (
    mark_verified,
    observe_identity,
    pin_current,
    withdraw_verification,
)
from e2eproxy.crypto.secret_storage import (
    CROSS_SIGNING_MASTER,
    CROSS_SIGNING_SELF_SIGNING,
    CROSS_SIGNING_USER_SIGNING,
)
from e2eproxy.protocol.canonical import b64decode, b64encode, sign_json, verify_json

# matrix-js-sdk spec/test-utils/crypto-test-data/index.ts (made by generate-test-data.py):
# Alice's three cross-signing seeds and the SSK/USK objects her master key signed.
JS_USER = "@alice:localhost"
JS_MASTER_SEED = "ZG95b3VzcGVha3doYWFhYWFhYWFhYWFhYWFhYWFhbGU"
JS_SSK_SEED = "c2VsZnNlbGZzZWxmc2VsZnNlbGZzZWxmc2VsZnNlbGY"
JS_USK_SEED = "dXNlcnVzZXJ1c2VydXNlcnVzZXJ1c2VydXNlcnVzZXI"
JS_MASTER_PUBLIC = "J+5An10v1vzZpAXTYFokD1/PEVccFnLC61EfRXit0UY"
JS_SSK_PUBLIC = "aU2+2CyXQTCuDcmWW0EL2bhJ6PdjFW2LbAsbHqf02AY"
JS_USK_PUBLIC = "g5TC/zjQXyZYuDLZv7a41z5fFVrXpYPypG//AFQj8hY"
JS_CROSS_SIGNING_KEYS: dict[str, Any] = {
    "master_keys": {JS_USER: {
        "keys": {f"ed25519:{JS_MASTER_PUBLIC}": JS_MASTER_PUBLIC},
        "user_id": JS_USER, "usage": ["master"],
    }},
    "self_signing_keys": {JS_USER: {
        "keys": {f"ed25519:{JS_SSK_PUBLIC}": JS_SSK_PUBLIC},
        "user_id": JS_USER, "usage": ["self_signing"],
        "signatures": {JS_USER: {f"ed25519:{JS_MASTER_PUBLIC}":
            "XfhYEhZmOs8BJdb3viatILBZ/bElsHXEW28V4tIaY5CxrBR0YOym3yZHWmRmypXessHZAKOhZn3yBMXzdajyCw"}},
    }},
    "user_signing_keys": {JS_USER: {
        "keys": {f"ed25519:{JS_USK_PUBLIC}": JS_USK_PUBLIC},
        "user_id": JS_USER, "usage": ["user_signing"],
        "signatures": {JS_USER: {f"ed25519:{JS_MASTER_PUBLIC}":
            "6AkD1XM2H0/ebgP9oBdMKNeft7uxsrb0XN1CsjjHgeZCvCTMmv3BHlLiT/Hzy4fe8H+S1tr484dcXN/PIdnfDA"}},
    }},
}
# matrix-rust-sdk crates/matrix-sdk/tests/integration/encryption/secret_storage.rs: a master
# key secret (padded base64, as rust-sdk stores it) and the public key its /keys/query lists.
RUST_MASTER_SECRET = "VcY1+LNyV6aSMne8mvi4lc/q+JiCHe+m6+hKLtgLP30="
RUST_MASTER_PUBLIC = "fKJdf5b3ga1hshUT5obkBteMNTtLkfy8qh4h5/XLNew"

ALICE, BOB = "@alice:example.org", "@bob:example.org"


class Device:
    """A device's signing identity, as the engine's AccountState offers it."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id, self.device_id = user_id, device_id
        self.account = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    def sign(self, message: bytes) -> str:
        return str(self.account.sign(message).to_base64())

    def device_keys(self) -> dict[str, Any]:
        keys = {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"ed25519:{self.device_id}": self.ed25519,
                         f"curve25519:{self.device_id}": self.account.curve25519_key.to_base64()}}
        return sign_json(keys, self.user_id, f"ed25519:{self.device_id}", self.sign)


def _query_answer(*uploads: tuple[str, dict[str, Any]], own: str | None = None) -> dict[str, Any]:
    """What /keys/query answers after these uploads; the USK only for ``own``, as servers do."""
    answer: dict[str, Any] = {"master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
    for user_id, body in uploads:
        answer["master_keys"][user_id] = copy.deepcopy(body["master_key"])
        answer["self_signing_keys"][user_id] = copy.deepcopy(body["self_signing_key"])
        if user_id == own:
            answer["user_signing_keys"][user_id] = copy.deepcopy(body["user_signing_key"])
    return answer


def _merge_signatures(target: dict[str, Any], signed: dict[str, Any]) -> None:
    for user, sigs in signed["signatures"].items():
        target.setdefault("signatures", {}).setdefault(user, {}).update(sigs)


# --- vectors ---------------------------------------------------------------------------------


def test_js_sdk_seeds_give_its_public_keys_and_identical_signatures() -> None:
    keys = CrossSigningKeys.from_secrets({
        CROSS_SIGNING_MASTER: JS_MASTER_SEED,
        CROSS_SIGNING_SELF_SIGNING: JS_SSK_SEED,
        CROSS_SIGNING_USER_SIGNING: JS_USK_SEED,
    })
    assert keys.master is not None and keys.master.public_key == JS_MASTER_PUBLIC
    body = keys.upload_body(JS_USER, "DEVICE", Device(JS_USER, "DEVICE").sign)
    # Ed25519 is deterministic: our canonical JSON and signing give js-sdk's bytes exactly.
    assert body["self_signing_key"] == JS_CROSS_SIGNING_KEYS["self_signing_keys"][JS_USER]
    assert body["user_signing_key"] == JS_CROSS_SIGNING_KEYS["user_signing_keys"][JS_USER]


def test_js_sdk_identity_verifies() -> None:
    identity = identity_from_query(JS_CROSS_SIGNING_KEYS, JS_USER)
    assert identity is not None
    assert identity.master.public_key == JS_MASTER_PUBLIC
    assert identity.user_signing is not None and identity.user_signing.public_key == JS_USK_PUBLIC
    keys = CrossSigningKeys.from_secrets({CROSS_SIGNING_SELF_SIGNING: JS_SSK_SEED})
    assert keys.matches(identity)


def test_rust_sdk_master_secret_gives_its_public_key() -> None:
    key = CrossSigningKey.from_secret(MASTER, RUST_MASTER_SECRET)
    assert key.public_key == RUST_MASTER_PUBLIC
    assert key.to_secret() == RUST_MASTER_SECRET.rstrip("=")  # written unpadded
    assert key.secret_name == CROSS_SIGNING_MASTER


# --- keys and bodies -------------------------------------------------------------------------


def test_secrets_round_trip_and_repr_hides_the_seed() -> None:
    keys = CrossSigningKeys.generate()
    secrets = keys.secrets()
    assert set(secrets) == {CROSS_SIGNING_MASTER, CROSS_SIGNING_SELF_SIGNING,
                            CROSS_SIGNING_USER_SIGNING}
    again = CrossSigningKeys.from_secrets(secrets)
    assert again.master is not None and keys.master is not None
    assert again.master.public_key == keys.master.public_key
    assert len(b64decode(secrets[CROSS_SIGNING_MASTER])) == 32
    assert not secrets[CROSS_SIGNING_MASTER].endswith("=")
    assert secrets[CROSS_SIGNING_MASTER] not in repr(keys)
    assert keys.master.to_secret() not in repr(keys.master)


@pytest.mark.parametrize("secret", ["not base64!", "c2hvcnQ"])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidCrossSigningKey):
        CrossSigningKey.from_secret(SELF_SIGNING, secret)


def test_upload_body_is_signed_as_the_spec_says() -> None:
    device = Device(ALICE, "ADEVICE")
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(ALICE, "ADEVICE", device.sign)
    assert keys.master and keys.self_signing and keys.user_signing
    master, ssk, usk = body["master_key"], body["self_signing_key"], body["user_signing_key"]
    assert master["usage"] == ["master"] and ssk["usage"] == ["self_signing"]
    assert usk["usage"] == ["user_signing"] and master["user_id"] == ALICE
    assert master["keys"] == {keys.master.key_id: keys.master.public_key}
    assert verify_json(master, ALICE, "ed25519:ADEVICE", device.ed25519)
    for sub in (ssk, usk):
        assert verify_json(sub, ALICE, keys.master.key_id, keys.master.public_key)
    with pytest.raises(CrossSigningError):
        CrossSigningKeys(master=keys.master).upload_body(ALICE, "ADEVICE", device.sign)


def test_own_query_answer_verifies_and_a_tampered_signature_does_not() -> None:
    device = Device(ALICE, "ADEVICE")
    keys = CrossSigningKeys.generate()
    answer = _query_answer((ALICE, keys.upload_body(ALICE, "ADEVICE", device.sign)), own=ALICE)
    identity = identity_from_query(answer, ALICE)
    assert identity is not None and identity.user_signing is not None
    assert keys.matches(identity)
    assert identity.is_signed_by_device("ADEVICE", device.ed25519)
    assert not CrossSigningKeys.generate().matches(identity)

    for field in ("self_signing_keys", "user_signing_keys"):
        tampered = copy.deepcopy(answer)
        sigs = tampered[field][ALICE]["signatures"][ALICE]
        key_id = next(iter(sigs))
        raw = bytearray(b64decode(sigs[key_id]))
        raw[0] ^= 1
        sigs[key_id] = b64encode(bytes(raw))
        with pytest.raises(InvalidIdentitySignature):
            identity_from_query(tampered, ALICE)
    # A changed key under a valid-looking signature fails the same way.
    swapped = copy.deepcopy(answer)
    other = CrossSigningKey.generate(SELF_SIGNING)
    swapped["self_signing_keys"][ALICE]["keys"] = {other.key_id: other.public_key}
    with pytest.raises(InvalidIdentitySignature):
        identity_from_query(swapped, ALICE)


@pytest.mark.parametrize("mutate", [
    lambda key: key.update(user_id=BOB),
    lambda key: key.update(usage=["self_signing"]),
    lambda key: key["keys"].update({"ed25519:other": "other"}),
    lambda key: key.update(keys={"ed25519:abc": "abd"}),
    lambda key: key.update(keys={"ed25519:abc": "abc"}),
    lambda key: key.update(usage="master"),
])
def test_malformed_master_keys_are_refused(mutate: Any) -> None:
    keys = CrossSigningKeys.generate()
    answer = _query_answer((ALICE, keys.upload_body(ALICE, "D", Device(ALICE, "D").sign)))
    mutate(answer["master_keys"][ALICE])
    with pytest.raises(InvalidCrossSigningKey):
        identity_from_query(answer, ALICE)
    assert ALICE in identities_from_query(answer).rejected


def test_batch_keeps_good_identities_and_reports_bad_ones() -> None:
    alice, bob = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    answer = _query_answer((ALICE, alice.upload_body(ALICE, "A", Device(ALICE, "A").sign)),
                           (BOB, bob.upload_body(BOB, "B", Device(BOB, "B").sign)))
    del answer["self_signing_keys"][BOB]
    result = identities_from_query(answer)
    assert set(result.identities) == {ALICE} and set(result.rejected) == {BOB}
    assert identity_from_query({"master_keys": {}}, ALICE) is None


def test_device_signed_by_ssk() -> None:
    keys = CrossSigningKeys.generate()
    phone, laptop = Device(ALICE, "PHONE"), Device(ALICE, "LAPTOP")
    identity = identity_from_query(
        _query_answer((ALICE, keys.upload_body(ALICE, "PHONE", phone.sign)), own=ALICE), ALICE)
    assert identity is not None and keys.self_signing is not None
    device_keys = laptop.device_keys()
    assert not identity.signs_device(device_keys)
    signed = sign_device(keys.self_signing, ALICE, device_keys)
    assert list(signed["signatures"]) == [ALICE]
    assert list(signed["signatures"][ALICE]) == [keys.self_signing.key_id]
    body = signatures_upload_body([signed])
    assert body == {ALICE: {"LAPTOP": signed}}
    # The server merges the new signature into the stored device keys.
    _merge_signatures(device_keys, signed)
    assert identity.signs_device(device_keys)
    assert verify_json(device_keys, ALICE, "ed25519:LAPTOP", laptop.ed25519)
    device_keys["keys"]["ed25519:LAPTOP"] = Device(ALICE, "X").ed25519
    assert not identity.signs_device(device_keys)
    with pytest.raises(CrossSigningError):
        sign_device(keys.self_signing, ALICE, Device(BOB, "B").device_keys())
    with pytest.raises(ValueError):
        sign_device(keys.master or keys.self_signing, ALICE, laptop.device_keys())


def test_user_signed_by_our_usk() -> None:
    ours, theirs = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    answer = _query_answer((ALICE, ours.upload_body(ALICE, "A", Device(ALICE, "A").sign)),
                           (BOB, theirs.upload_body(BOB, "B", Device(BOB, "B").sign)), own=ALICE)
    me, bob = identity_from_query(answer, ALICE), identity_from_query(answer, BOB)
    assert me is not None and bob is not None and bob.user_signing is None
    assert ours.user_signing is not None
    assert not me.has_signed_user(bob)
    signed = sign_user(ours.user_signing, ALICE, answer["master_keys"][BOB])
    assert theirs.master is not None
    assert signatures_upload_body([signed]) == {BOB: {theirs.master.public_key: signed}}
    _merge_signatures(answer["master_keys"][BOB], signed)
    bob = identity_from_query(answer, BOB)
    assert bob is not None and me.has_signed_user(bob)
    assert not bob.has_signed_user(me)  # Bob's identity has no USK visible to us
    with pytest.raises(CrossSigningError):
        sign_user(ours.user_signing, ALICE, answer["master_keys"][ALICE])


def test_device_id_colliding_with_a_cross_signing_key_is_detected() -> None:
    keys = CrossSigningKeys.generate()
    identity = identity_from_query(
        _query_answer((BOB, keys.upload_body(BOB, "B", Device(BOB, "B").sign))), BOB)
    assert identity is not None and keys.master is not None
    assert not identity.collides_with_device(["B", "C"])
    assert identity.collides_with_device(["B", keys.master.public_key])


# --- pinning ---------------------------------------------------------------------------------


def _identity(user_id: str) -> UserIdentity:
    keys = CrossSigningKeys.generate()
    answer = _query_answer((user_id, keys.upload_body(user_id, "D", Device(user_id, "D").sign)))
    identity = identity_from_query(answer, user_id)
    assert identity is not None
    return identity


def test_first_identity_is_pinned_and_a_change_is_reported() -> None:
    first, second = _identity(BOB), _identity(BOB)
    record, change = observe_identity(None, first)
    assert change is None and not record.needs_approval and not record.verified
    assert observe_identity(record, first) == (record, None)

    record, change = observe_identity(record, second)
    assert change is not None and not change.verification_violation
    assert change.old_master == first.master.public_key
    assert change.new_master == second.master.public_key
    assert record.needs_approval and not record.verification_violation
    record = pin_current(record)
    assert not record.needs_approval and record.pinned_master == second.master.public_key


def test_change_of_a_verified_identity_is_a_verification_violation() -> None:
    first, second = _identity(BOB), _identity(BOB)
    record, _ = observe_identity(None, first)
    record = mark_verified(record)
    assert record.verified and not record.verification_violation
    record, change = observe_identity(record, second)
    assert change is not None and change.was_verified and change.verification_violation
    assert record.verification_violation and record.needs_approval
    # Re-verifying the new identity clears it; so does withdrawing verification.
    assert not mark_verified(record).verification_violation
    withdrawn = withdraw_verification(record)
    assert not withdrawn.verification_violation and not withdrawn.needs_approval


def test_verified_flag_latches_per_master_key() -> None:
    first, second = _identity(BOB), _identity(BOB)
    record, _ = observe_identity(None, first, verified=True)
    assert record.verified and record.previously_verified
    record, _ = observe_identity(record, first)  # not re-signed this time: still verified
    assert record.verified
    record, change = observe_identity(record, second, verified=True)
    assert change is not None and change.was_verified and not record.verification_violation


@pytest.mark.parametrize("usage", [MASTER, SELF_SIGNING, USER_SIGNING])
def test_key_ids_and_public_objects(usage: str) -> None:
    key = CrossSigningKey.generate(usage)
    assert key.key_id == f"ed25519:{key.public_key}"
    assert key.public_object(ALICE) == {"user_id": ALICE, "usage": [usage],
                                        "keys": {key.key_id: key.public_key}}
