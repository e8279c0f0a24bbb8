"""The per-account background work: a light sync of its own, the engine's outgoing requests and
the key backup uploader (the store leases of all accounts renew together: lease_keeper.py).

The background sync keeps to-device messages (room keys), device list changes and one-time key
counts flowing while no client syncs. It is filtered down to what crypto needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import quote

from e2eproxy.crypto.results import Decrypted
from e2eproxy.errors import UpstreamError
from e2eproxy.protocol.rewrite import sync_slots
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.backup_io import upload_loop
from e2eproxy.proxy.decrypt_io import decrypt_slots
from e2eproxy.proxy.intake import (
    BACKGROUND_STREAM,
    CLIENT_STREAM,
    feed_verifications,
    process_sync,
)
from e2eproxy.proxy.outgoing import drain_outgoing
from e2eproxy.proxy.upstream import Upstream

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
IDLE_DRAIN_S = 60.0
MAX_BACKOFF_S = 60.0
# A client re-polls within milliseconds of an answer; this long without one, it is not syncing.
CLIENT_GRACE_S = 0.5
STOP_TIMEOUT_S = 5.0
VERIFICATION_WINDOW_MS = 10 * 60_000
CRYPTO_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {
        "timeline": {
            "limit": 50,
            # Encrypted events and verification ones: in-room verification reaches the engine
            # while no client syncs (decrypted only when there are any).
            "types": ["m.room.encryption", "m.room.member", "m.room.history_visibility",
                      "m.room.encrypted", "m.key.verification.*"],
        },
        "state": {
            "types": ["m.room.encryption", "m.room.member", "m.room.history_visibility"],
            "lazy_load_members": False,
        },
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "include_leave": True,
    },
}
_FILTER_PARAM = quote(json.dumps(CRYPTO_FILTER, separators=(",", ":")))


def start_worker(upstream: Upstream, account: Account) -> None:
    name = f"{account.user_id}/{account.device_id}"
    account.tasks = [
        asyncio.create_task(_sync_loop(upstream, account), name=f"sync {name}"),
        asyncio.create_task(_outgoing_loop(upstream, account), name=f"outgoing {name}"),
        asyncio.create_task(upload_loop(upstream, account), name=f"backup {name}"),
    ]
    account.wake_outgoing.set()


async def stop_worker(account: Account) -> None:
    for task in account.tasks:
        task.cancel()
    if account.tasks:
        # Bounded: a stop (logout, shutdown) must never hang on one stuck task.
        _, stuck = await asyncio.wait(account.tasks, timeout=STOP_TIMEOUT_S)
        for task in stuck:
            log.error("Worker task %s did not stop in time", task.get_name())
    account.tasks = []
    # Let fire-and-forget writes finish before the store closes.
    await asyncio.gather(*account.background, return_exceptions=True)


async def _background_poll(upstream: Upstream, account: Account, path: str) -> tuple[int, Any]:
    """One background /sync, cancelled by a client long-poll starting (see Account)."""
    poll = asyncio.ensure_future(
        upstream.request_json(
            "GET", path, access_token=account.access_token, long_poll=SYNC_TIMEOUT_MS
        )
    )
    account.background_poll = poll
    try:
        await asyncio.wait({poll})
    finally:
        account.background_poll = None
        poll.cancel()
    if poll.cancelled():
        return -1, None  # a client took over the stream: nothing was received, nothing lost
    try:
        return poll.result()
    except UpstreamError as exc:
        return 0, {"error": exc.message}


async def _sync_loop(upstream: Upstream, account: Account) -> None:
    since = await account.store.get_sync_token(account.key, BACKGROUND_STREAM)
    borrow_client_token = True
    backoff = 1.0
    while True:
        await account.token_valid.wait()
        # While the client long-polls, its syncs feed the engine: polling too would double the
        # homeserver's work for every event. Resume once it has been quiet for a moment.
        await account.client_idle.wait()
        await account.timer.sleep(CLIENT_GRACE_S)
        if not account.client_idle.is_set():
            continue
        if not since and borrow_client_token:
            # Start where the client's stream is, when it has one: an initial sync is heavy and
            # tells nothing the client's syncs have not already fed the engine.
            since = await account.store.get_sync_token(account.key, CLIENT_STREAM)
        path = f"/_matrix/client/v3/sync?filter={_FILTER_PARAM}&set_presence=offline"
        if since:
            path += f"&since={quote(since)}&timeout={SYNC_TIMEOUT_MS}"
        key_uploads = account.machine.key_uploads
        status, body = await _background_poll(upstream, account, path)
        if status == -1:
            continue
        if status == 200 and isinstance(body, dict) and isinstance(body.get("next_batch"), str):
            try:
                await process_sync(account, body, BACKGROUND_STREAM, initial=not since,
                                   key_uploads=key_uploads)
                await _verifications_of(account, body)
            except Exception:
                # The position is not advanced, so the server delivers it all again: nothing
                # is lost, and the loop (the account's only key intake when idle) lives on.
                log.exception(
                    "Background sync for %s: could not apply a sync; retrying in %.0f s",
                    account.device_id, backoff,
                )
                await account.timer.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            since = body["next_batch"]
            backoff = 1.0
            continue
        if status == 401:
            log.warning(
                "Background sync for %s: token refused; waiting for a new login", account.device_id
            )
            account.token_valid.clear()
            continue
        if status == 400 and since:
            # A server that no longer knows the position (reset, or a token another stream
            # left behind) would refuse it forever: start afresh with an initial sync.
            log.warning(
                "Background sync for %s: the server refused the sync position; starting afresh",
                account.device_id,
            )
            since, borrow_client_token = None, False
            async with account.step() as step:
                step.machine.mark_all_tracked_users_dirty()
            continue
        log.info(
            "Background sync for %s failed (%s); retrying in %.0f s",
            account.device_id,
            status,
            backoff,
        )
        await account.timer.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _verifications_of(account: Account, body: dict[str, Any]) -> None:
    """Decrypt the recent encrypted timeline events (an in-room verification is at most
    10 minutes old) and feed the verification events among them to the engine."""
    oldest = account.timer.now_ms() - VERIFICATION_WINDOW_MS
    slots = [s for s in sync_slots(body)
             if isinstance(ts := s.event.get("origin_server_ts"), int) and ts >= oldest]
    if slots:
        for slot, result in zip(slots, await decrypt_slots(account, slots), strict=True):
            if isinstance(result, Decrypted):
                slot.replace(result.event)
    await feed_verifications(account, body)


async def _outgoing_loop(upstream: Upstream, account: Account) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_DRAIN_S):  # not wait_for: see Account.wait_for_keys
                await account.wake_outgoing.wait()
        account.wake_outgoing.clear()
        await account.token_valid.wait()
        try:
            await drain_outgoing(upstream, account)
        except Exception:
            log.exception("Sending crypto requests for %s failed", account.device_id)
            await account.timer.sleep(5)
