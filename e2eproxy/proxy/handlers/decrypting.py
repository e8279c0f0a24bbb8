"""Write decryption results back into a response: the plain event, or a visible notice."""

from __future__ import annotations

import time

from aiohttp import web

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.crypto.settings import MEGOLM_ALGORITHM
from e2eproxy.protocol.rewrite import Slot, undecryptable_notice
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.app_keys import CONFIG, MEDIA, UPSTREAM
from e2eproxy.proxy.decrypt_io import ask_own_devices, decrypt_slots
from e2eproxy.proxy.media import expose_urls, media_of_event

# Where a decrypted event tells the client who encrypted it (as rust-sdk's EncryptionInfo).
ENCRYPTION_INFO = "org.e2eproxy.encryption"
# A key for an event older than this is not "on its way" any more: do not hold a /sync for it.
RECENT_MS = 5 * 60 * 1000

_REASONS = {
    FailureReason.MISSING_SESSION: "the sender's room key has not reached this device",
    FailureReason.UNKNOWN_MESSAGE_INDEX: "this device only has the room key from a later message",
    FailureReason.REPLAYED: "the message was replayed (a possible attack); it was rejected",
    FailureReason.ROOM_MISMATCH: "the message claims to belong to another room; it was rejected",
    FailureReason.MALFORMED: "the encrypted event is malformed",
    FailureReason.UNSUPPORTED_ALGORITHM: "the encryption algorithm is not supported",
    FailureReason.DECRYPTION_FAILED: "the ciphertext failed its integrity check",
    FailureReason.PAYLOAD_INVALID: "the decrypted payload is invalid",
    FailureReason.SENDER_MISMATCH: "it was sent with another user's room key; it was rejected",
}


def failure_text(failure: DecryptionFailure) -> str:
    if failure.withheld_code:
        return f"the sender withheld the room key ({failure.withheld_code})"
    return _REASONS.get(failure.reason, failure.reason.value)


def add_encryption_info(result: Decrypted) -> None:
    """Tell the client, in the event's ``unsigned``, which device encrypted it and what the
    proxy knows of that device (it shows no shield, so this is where a bot can look)."""
    unsigned = result.event.setdefault("unsigned", {})
    if isinstance(unsigned, dict):
        unsigned[ENCRYPTION_INFO] = {
            "algorithm": MEGOLM_ALGORITHM,
            "sender_curve25519_key": result.sender_key,
            "sender_device": result.sender_device,
            "session_id": result.session_id,
            "verification": result.trust.value,
            "verification_violation": result.verification_violation,
        }


def _recent(slot: Slot) -> bool:
    ts = slot.event.get("origin_server_ts") if isinstance(slot.event, dict) else None
    return isinstance(ts, int) and time.time() * 1000 - ts < RECENT_MS


async def decrypt_in_place(
    request: web.Request, account: Account, slots: list[Slot], *, wait: bool = False
) -> None:
    """Replace every encrypted event in `slots` by its plaintext or by a notice saying why not."""
    encryption = request.app[CONFIG].encryption
    wait_s = encryption.missing_key_wait if wait else 0.0
    results = await decrypt_slots(account, slots, wait_s, _recent, request.app[UPSTREAM])
    await ask_own_devices(account, slots, results)
    media = request.app[MEDIA].of(account)
    for slot, result in zip(slots, results, strict=True):
        if isinstance(result, DecryptionFailure):
            if encryption.undecryptable == "notice":
                slot.replace(undecryptable_notice(slot.event, failure_text(result)))
            continue
        content = result.event.get("content")
        if isinstance(content, dict) and ("file" in content or "info" in content):
            # Remember the file keys so downloads through the proxy decrypt, and show the
            # plain client the urls it understands.
            for mxc, known in media_of_event(content):
                await media.add_known(mxc, known)
            expose_urls(content)
        add_encryption_info(result)
        slot.replace(result.event)
