"""The async shell around the engine: send what it asks for, feed back what the server said,
and persist every step before anything depends on it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason, SyncResult
from e2eproxy.errors import LocalProtocolError, MatrixError, UpstreamError
from e2eproxy.protocol.api import OutgoingRequest, RequestKind
from e2eproxy.protocol.rewrite import Slot, sync_room_parts
from e2eproxy.proxy.account import HOMESERVER_SECRET, Account
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.types import RoomId, SessionId

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4
MAX_RETRY_DELAY_S = 10.0
SHARE_STEPS = 6
# Failures a key still on its way could fix; the others will not change by waiting.
WAITABLE = (FailureReason.MISSING_SESSION, FailureReason.UNKNOWN_MESSAGE_INDEX)

Result = Decrypted | DecryptionFailure


async def call(
    upstream: Upstream,
    account: Account,
    method: str,
    path: str,
    body: Any = None,
    *,
    attempts: int = RETRY_ATTEMPTS,
) -> tuple[int, Any]:
    """A JSON request with the account's token; 429 and 5xx are retried with backoff.

    Returns the last (status, body). Raises UpstreamError only if every attempt failed to connect.
    """
    delay = 0.5
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            status, data = await upstream.request_json(
                method, path, access_token=account.access_token, body=body
            )
        except UpstreamError:
            if last:
                raise
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            continue
        if status == 401 and isinstance(data, dict) and data.get("errcode") == "M_UNKNOWN_TOKEN":
            account.token_valid.clear()
        if (status == 429 or status >= 500) and not last:
            wait = delay
            if status == 429 and isinstance(data, dict):
                retry_ms = data.get("retry_after_ms")
                if isinstance(retry_ms, int) and retry_ms >= 0:
                    wait = retry_ms / 1000
            await asyncio.sleep(min(wait, MAX_RETRY_DELAY_S))
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            continue
        return status, data
    raise AssertionError("unreachable")


async def send_engine_request(
    upstream: Upstream, account: Account, request: OutgoingRequest
) -> bool:
    """Send one engine request and report the answer back to the engine; True on success."""
    try:
        if request.kind is RequestKind.KEYS_CLAIM:
            async with account.claim_lock:
                status, data = await call(
                    upstream, account, request.method, request.path, request.body
                )
        else:
            status, data = await call(upstream, account, request.method, request.path, request.body)
    except UpstreamError as exc:
        status, data = 0, {"error": exc.message}
    ok = 200 <= status < 300 and isinstance(data, dict)
    if not ok:
        log.warning(
            "%s request failed for %s: %s %s",
            request.kind.value,
            account.device_id,
            status,
            data.get("errcode") if isinstance(data, dict) else "",
        )
    async with account.lock:
        if ok:
            account.machine.mark_request_as_sent(request.id, data)
        else:
            account.machine.mark_request_as_failed(request.id, data)
        await account.commit()
    return ok


async def drain_outgoing(upstream: Upstream, account: Account, rounds: int = 5) -> None:
    """Send everything the engine wants sent (one drainer per account at a time)."""
    async with account.outgoing_lock:
        for _ in range(rounds):
            async with account.lock:
                requests = account.machine.outgoing_requests()
                await account.commit()
            if not requests:
                return
            await asyncio.gather(*(send_engine_request(upstream, account, r) for r in requests))


# The two sync streams fed to the engine; each keeps its own token in the store.
CLIENT_STREAM = "client"
BACKGROUND_STREAM = "background"


async def process_sync(account: Account, body: dict[str, Any], stream: str) -> SyncResult:
    """Feed a /sync body to the engine and persist it with the stream's next token."""
    token = body.get("next_batch")
    async with account.lock:
        result = account.machine.receive_sync(body)
        tokens = {stream: token} if isinstance(token, str) else None
        await account.commit(sync_tokens=tokens)
    for room_id in membership_changes(body):
        account.members_changed(room_id)
    if result.room_keys:
        await account.notify_keys()
    account.wake_outgoing.set()
    return result


def membership_changes(body: dict[str, Any]) -> set[str]:
    """Rooms whose member list this sync changed."""
    return {
        room_id
        for room_id, _, part in sync_room_parts(body, ("join",))
        if any(isinstance(e, dict) and e.get("type") == "m.room.member" for e in part["events"])
    }


async def _copy_from_siblings(account: Account, missing: list[tuple[RoomId, SessionId]]) -> None:
    """Room keys this device lacks, from the same user's other devices in this store: a user
    who logs in again through the proxy (a new device) keeps reading the history its earlier
    devices could. Call with the account lock held."""
    siblings = [
        key for key in await account.store.list_accounts()
        if key.user_id == account.user_id and key.device_id != account.device_id
    ]
    for sibling in siblings:
        if await account.store.get_secret(sibling, HOMESERVER_SECRET) != account.homeserver:
            continue  # the same user ID on another homeserver: someone else, maybe

        records, _ = await account.store.load_inbound_group_sessions(sibling, missing)
        if records:
            added = account.machine.add_sibling_sessions(records)
            log.debug("%d room keys copied from %s to %s", added, sibling.device_id,
                      account.device_id)
            missing = account.machine.missing_inbound_group_sessions(missing)
            if not missing:
                return


async def _decrypt_now(account: Account, slots: list[Slot]) -> list[Result]:
    by_room: dict[str, list[Any]] = defaultdict(list)
    for slot in slots:
        by_room[slot.room_id].append(slot.event)
    async with account.lock:
        needed = []
        for room_id, events in by_room.items():
            needed.extend(account.machine.sessions_needed(room_id, events))
        if needed:
            records, replays = await account.store.load_inbound_group_sessions(account.key, needed)
            account.machine.load_inbound_group_sessions(records, replays)
            missing = account.machine.missing_inbound_group_sessions(needed)
            if missing:
                await _copy_from_siblings(account, missing)
        results = [account.machine.decrypt_room_event(s.room_id, s.event) for s in slots]
        await account.commit()
    return results


async def decrypt_slots(
    account: Account,
    slots: list[Slot],
    wait_s: float = 0.0,
    may_wait: Callable[[Slot], bool] = lambda slot: True,
) -> list[Result]:
    """Decrypt every slot; with `wait_s`, give keys still on their way (for the slots `may_wait`
    accepts) that long to arrive."""
    if not slots:
        return []
    results = await _decrypt_now(account, slots)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        pending = [i for i, r in enumerate(results) if _waitable(r) and may_wait(slots[i])]
        remaining = deadline - loop.time()
        if not pending or remaining <= 0:
            return results
        if not await account.wait_for_keys(remaining):
            return results
        retried = await _decrypt_now(account, [slots[i] for i in pending])
        for i, result in zip(pending, retried, strict=True):
            results[i] = result


def _waitable(result: Result) -> bool:
    return (
        isinstance(result, DecryptionFailure)
        and result.reason in WAITABLE
        and result.withheld_code is None
    )


async def share_room_key(
    upstream: Upstream, account: Account, room_id: str, members: list[str]
) -> None:
    """Run the query -> claim -> to-device steps until the room key reached every device.

    Call with the room lock held. A failed to-device batch makes the engine drop the session, so
    nobody is left holding a key others lack; the caller gets a Matrix error to pass on.
    """
    for _ in range(SHARE_STEPS):
        async with account.lock:
            requests = account.machine.share_room_key(room_id, members)
            await account.commit()
        if not requests:
            return
        key_steps = any(r.kind is not RequestKind.TO_DEVICE for r in requests)
        results = await asyncio.gather(
            *(send_engine_request(upstream, account, r) for r in requests)
        )
        if not key_steps:
            if not all(results):
                raise MatrixError(
                    502,
                    "M_UNKNOWN",
                    "Could not share the room key with every device; nothing was sent. Try again.",
                )
            return
    raise LocalProtocolError(f"room key sharing for {room_id} did not settle")
