"""What the engine wants sent: requests to the homeserver with the account's token (retried with
backoff on 429 and 5xx), each answer fed back to the engine in a step, and the room key share
that runs the engine's query -> claim -> to-device steps to the end."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from e2eproxy.errors import (
    HomeserverFailed,
    LocalProtocolError,
    MatrixError,
    UpstreamError,
    token_refused,
)
from e2eproxy.protocol.api import OutgoingRequest, RequestKind
from e2eproxy.proxy.account import Account
from e2eproxy.proxy.upstream import Upstream

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4
MAX_RETRY_DELAY_S = 10.0
SHARE_STEPS = 6


def retry_wait(status: int, data: Any, backoff: float) -> float:
    """Seconds to wait before trying again after `status`: the `retry_after_ms` of a 429 that
    has one, else `backoff`; never more than MAX_RETRY_DELAY_S."""
    wait = backoff
    if status == 429 and isinstance(data, dict):
        retry_ms = data.get("retry_after_ms")
        if isinstance(retry_ms, int) and retry_ms >= 0:
            wait = retry_ms / 1000
    return min(wait, MAX_RETRY_DELAY_S)


def jittered(backoff: float) -> float:
    return backoff * (1 + random.random() / 2)


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
            await account.timer.sleep(jittered(delay))
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            continue
        if token_refused(status, data):
            account.token_valid.clear()
        if (status == 429 or status >= 500) and not last:
            await account.timer.sleep(retry_wait(status, data, delay))
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            continue
        return status, data
    raise AssertionError("unreachable")


async def _send(upstream: Upstream, account: Account, request: OutgoingRequest
                ) -> tuple[int, Any]:
    if request.kind is RequestKind.KEYS_CLAIM:
        async with account.claim_lock:
            return await call(upstream, account, request.method, request.path, request.body)
    if request.kind is RequestKind.ROOM_MESSAGE:
        # Imported here: room_crypto shares room keys through this module.
        from e2eproxy.proxy.room_crypto import send_room_event

        body = request.body
        return await send_room_event(upstream, account, body["room_id"], body["type"],
                                     body["content"], txn=request.id)
    return await call(upstream, account, request.method, request.path, request.body)


async def send_engine_request(
    upstream: Upstream, account: Account, request: OutgoingRequest
) -> bool:
    """Send one engine request and report the answer back to the engine; True on success."""
    try:
        status, data = await _send(upstream, account, request)
    except UpstreamError as exc:
        status, data = 0, {"error": exc.message}
    except MatrixError as exc:  # an engine room event the room's state refused to take
        status, data = exc.status, exc.to_json()
    ok = 200 <= status < 300 and isinstance(data, dict)
    if ok:
        account.metrics.count_to_device_sent(request)
    else:
        log.warning(
            "%s request failed for %s: %s %s",
            request.kind.value,
            account.device_id,
            status,
            data.get("errcode") if isinstance(data, dict) else "",
        )
    async with account.step() as step:
        if ok:
            step.machine.mark_request_as_sent(request.id, data)
        else:
            step.machine.mark_request_as_failed(request.id, data)
    return ok


async def drain_outgoing(upstream: Upstream, account: Account, rounds: int = 5) -> None:
    """Send everything the engine wants sent (one drainer per account at a time)."""
    async with account.outgoing_lock:
        for _ in range(rounds):
            async with account.step() as step:
                requests = step.machine.outgoing_requests()
            if not requests:
                return
            await asyncio.gather(*(send_engine_request(upstream, account, r) for r in requests))


async def share_room_key(
    upstream: Upstream, account: Account, room_id: str, members: list[str]
) -> None:
    """Run the query -> claim -> to-device steps until the room key reached every device.

    Call with the room lock held. A failed to-device batch makes the engine drop the session, so
    nobody is left holding a key others lack; a failed query or claim would leave devices out of
    the share (a member whose devices we never learnt, a device with no Olm session), so it
    fails the share as well. Either way the caller gets a Matrix error to pass on.
    """
    for _ in range(SHARE_STEPS):
        async with account.step() as step:
            requests = step.machine.share_room_key(room_id, members)
        if not requests:
            return
        key_steps = any(r.kind is not RequestKind.TO_DEVICE for r in requests)
        results = await asyncio.gather(
            *(send_engine_request(upstream, account, r) for r in requests)
        )
        if key_steps and not all(results):
            raise HomeserverFailed(
                "Could not fetch the keys of the room members' devices; nothing was sent. "
                "Try again.",
            )
        if not key_steps:
            if not all(results):
                raise HomeserverFailed(
                    "Could not share the room key with every device; nothing was sent. Try again.",
                )
            account.metrics.count_key_share(requests)
            return
    raise LocalProtocolError(f"room key sharing for {room_id} did not settle")
