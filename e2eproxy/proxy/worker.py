"""The per-account background work: a light sync of its own, the engine's outgoing requests and
the key backup uploader (the store leases of all accounts renew together: lease_keeper.py).

The background sync keeps to-device messages (room keys), device list changes and one-time key
counts flowing while no client syncs. It is filtered down to what crypto needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from e2eproxy.crypto.results import Decrypted
from e2eproxy.errors import UpstreamError
from e2eproxy.protocol.rewrite import sync_slots
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.background_filter import BackgroundFilter
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
from e2eproxy.timing import spread

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
# Each long-poll asks for up to this fraction less: accounts that started together drift apart
# instead of waking the proxy (and the homeserver) together every 30 s.
POLL_JITTER = 0.1
# The first long-poll after a catch-up lasts a random part of the timeout, at least half of it:
# accounts that caught up together part there (and a new login's next /sync is not at once).
FIRST_POLL_JITTER = 0.5
IDLE_DRAIN_S = 60.0
IDLE_JITTER = 0.25
MAX_BACKOFF_S = 60.0
# A client re-polls within milliseconds of an answer; this long without one, it is not syncing.
CLIENT_GRACE_S = 0.5
STOP_TIMEOUT_S = 5.0
VERIFICATION_WINDOW_MS = 10 * 60_000


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


@dataclass
class _Position:
    """Where the background stream stands, and what its next request asks for."""

    since: str | None
    borrow_client_token: bool = True
    # A sync was applied since the worker started: from then on the requests long-poll.
    caught_up: bool = False
    long_polled: bool = False
    # A client's poll cancelled ours: wait for a moment of quiet before the next. So at the
    # start too: a client that just logged in is about to sync, and its sync would do.
    yielded: bool = True

    def timeout_ms(self) -> int | None:
        """None for an initial sync; 0 for a catch-up (whatever is new, at once); else a
        long-poll (see poll_timeout_ms)."""
        if not self.since:
            return None
        if not self.caught_up:
            return 0
        first, self.long_polled = not self.long_polled, True
        return poll_timeout_ms(first)


def poll_timeout_ms(first: bool) -> int:
    """A long-poll's timeout: the first after a catch-up lasts a random part of the whole
    (accounts that caught up together part there), later ones a little less than the whole."""
    return round(spread(SYNC_TIMEOUT_MS, FIRST_POLL_JITTER if first else POLL_JITTER))


def sync_path(filter_param: str, since: str | None, timeout_ms: int | None) -> str:
    path = f"/_matrix/client/v3/sync?filter={filter_param}&set_presence=offline"
    if since:
        path += f"&since={quote(since)}&timeout={timeout_ms or 0}"
    return path


async def _client_quiet(account: Account, position: _Position) -> bool:
    """While a client long-polls, its syncs feed the engine: polling too would double the
    homeserver's work for every event. Resume once it has been quiet for a moment."""
    if account.client_idle.is_set() and not position.yielded:
        return True
    position.yielded = False
    await account.client_idle.wait()
    await account.timer.sleep(CLIENT_GRACE_S)
    return account.client_idle.is_set()


async def _sync_loop(upstream: Upstream, account: Account) -> None:
    position = _Position(await account.store.get_sync_token(account.key, BACKGROUND_STREAM))
    sync_filter = BackgroundFilter(upstream, account)
    backoff = 1.0
    while True:
        await account.token_valid.wait()
        if not await _client_quiet(account, position):
            continue
        if not position.since and position.borrow_client_token:
            # Start where the client's stream is, when it has one: an initial sync is heavy and
            # tells nothing the client's syncs have not already fed the engine.
            position.since = await account.store.get_sync_token(account.key, CLIENT_STREAM)
        # A catch-up (or initial) sync returns at once with all that is new: a few at a time
        # per homeserver, so a thousand accounts starting together queue here, not there.
        gate = contextlib.nullcontext() if position.caught_up else upstream.catch_up
        async with gate:
            filter_param = await sync_filter.param(upload=position.caught_up)
            path = sync_path(filter_param, position.since, position.timeout_ms())
            status, applied = await _sync_round(upstream, account, path, position)
        if status == -1:
            position.yielded = True
            continue
        if applied is True:
            backoff = 1.0
            continue
        if applied is None and status == 200:  # got it, could not apply it: asked again
            await account.timer.sleep(spread(backoff, 0.5))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        if status == 401:
            log.warning(
                "Background sync for %s: token refused; waiting for a new login", account.device_id
            )
            account.token_valid.clear()
            continue
        if status == 400:
            # The position or the filter's id (the same error for both): both afresh. A lost
            # filter is rare (a server reset, which loses positions too).
            sync_filter.forget()
            if position.since:
                await _start_afresh(account, position)
            continue
        log.info("Background sync for %s failed (%s); retrying in %.0f s",
                 account.device_id, status, backoff)
        await account.timer.sleep(spread(backoff, 0.5))
        backoff = min(backoff * 2, MAX_BACKOFF_S)


async def _sync_round(upstream: Upstream, account: Account, path: str, position: _Position
                      ) -> tuple[int, bool | None]:
    """One background /sync and, when it answers, its body applied: (status, True) once
    applied, (200, None) when it could not be (the position stays: the server sends it all
    again, nothing is lost), (status, False) for no usable answer."""
    key_uploads = account.machine.key_uploads
    status, body = await _background_poll(upstream, account, path)
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("next_batch"), str):
        return status, False
    try:
        await process_sync(account, body, BACKGROUND_STREAM, initial=not position.since,
                           key_uploads=key_uploads)
        if body.get("rooms"):
            await _verifications_of(account, body)
    except Exception:
        # The loop (the account's only key intake when idle) lives on.
        log.exception("Background sync for %s: could not apply a sync; retrying",
                      account.device_id)
        return status, None
    position.since, position.caught_up = body["next_batch"], True
    return status, True


async def _start_afresh(account: Account, position: _Position) -> None:
    """A server that no longer knows the position (reset, or a token another stream left
    behind) would refuse it forever: start afresh with an initial sync."""
    log.warning("Background sync for %s: the server refused the sync position; starting afresh",
                account.device_id)
    position.since, position.borrow_client_token, position.caught_up = None, False, False
    async with account.step() as step:
        step.machine.mark_all_tracked_users_dirty()


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
    loop = asyncio.get_running_loop()
    while True:
        # Woken by a step, or about every minute (spread: accounts that started together do
        # not all wake in the same moment) by a timer that sets the event: cheaper than a
        # timeout that cancels the wait, a thousand times a minute in a fleet.
        timer = loop.call_later(spread(IDLE_DRAIN_S, IDLE_JITTER), account.wake_outgoing.set)
        try:
            await account.wake_outgoing.wait()
        finally:
            timer.cancel()
        account.wake_outgoing.clear()
        await account.token_valid.wait()
        try:
            await drain_outgoing(upstream, account)
        except Exception:
            log.exception("Sending crypto requests for %s failed", account.device_id)
            await account.timer.sleep(5)
