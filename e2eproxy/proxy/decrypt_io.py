"""Room events through the engine: the inbound sessions they need loaded from the store (or
copied from the same user's other devices), decrypted in one step, and, when asked, a short wait
for keys still on their way."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from e2eproxy.crypto.results import Decrypted, DecryptionFailure, FailureReason
from e2eproxy.protocol.rewrite import Slot
from e2eproxy.proxy.account import HOMESERVER_SECRET, Account
from e2eproxy.proxy.backup_io import restore_one
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.types import RoomId, SessionId

log = logging.getLogger(__name__)

# Failures a key still on its way could fix; the others will not change by waiting.
WAITABLE = (FailureReason.MISSING_SESSION, FailureReason.UNKNOWN_MESSAGE_INDEX)

Result = Decrypted | DecryptionFailure
# Sessions fetched from the key backup for one response at most (each is a request).
MAX_BACKUP_FETCHES = 20
# Keys the user's other devices lacked, not searched for again until one of them saves room
# keys: at most this many, each for at most this long (another instance sharing the store may
# save some without this one knowing).
MAX_SIBLING_MISSES = 10_000
SIBLING_MISS_TTL_S = 300.0
SIBLING_MISSES = "sibling_misses"  # in Account.extras

SessionKey = tuple[RoomId, SessionId]


@dataclass
class SiblingMisses:
    """What a search of the user's other devices did not find, as of ``saved`` (the store's
    ``room_keys_saved`` for the user then), with when it was searched."""

    saved: int = -1
    keys: OrderedDict[SessionKey, float] = field(default_factory=OrderedDict)

    def still_missing(self, keys: list[SessionKey], saved: int, now: float) -> list[SessionKey]:
        """Of ``keys``, those worth searching for: all, once room keys were saved since."""
        if saved != self.saved:
            self.saved = saved
            self.keys.clear()
        return [k for k in keys if now - self.keys.get(k, float("-inf")) >= SIBLING_MISS_TTL_S]

    def add(self, keys: list[SessionKey], now: float) -> None:
        for key in keys:
            self.keys[key] = now
            self.keys.move_to_end(key)
        while len(self.keys) > MAX_SIBLING_MISSES:
            self.keys.popitem(last=False)


async def _copy_from_siblings(account: Account, missing: list[SessionKey]) -> None:
    """Room keys this device lacks, from the same user's other devices in this store: a user
    who logs in again through the proxy (a new device) keeps reading the history its earlier
    devices could. A key none of them has is not searched for again (each undecryptable
    read would ask the store) until room keys are saved for one of the user's devices. Call
    inside a step."""
    misses = account.extras.setdefault(SIBLING_MISSES, SiblingMisses())
    saved, now = account.store.room_keys_saved(account.user_id), account.timer.monotonic()
    missing = misses.still_missing(missing, saved, now)
    if missing:
        missing = await _search_siblings(account, missing)
        misses.add(missing, now)


async def _search_siblings(account: Account, missing: list[SessionKey]) -> list[SessionKey]:
    """Copy what the user's other devices hold of ``missing``; returns what is still missing."""
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
                break
    return missing


async def _decrypt_now(account: Account, slots: list[Slot]) -> list[Result]:
    by_room: dict[str, list[Any]] = defaultdict(list)
    for slot in slots:
        by_room[slot.room_id].append(slot.event)
    async with account.step() as step:
        machine = step.machine
        needed = []
        for room_id, events in by_room.items():
            needed.extend(machine.sessions_needed(room_id, events))
        if needed:
            records, replays = await account.store.load_inbound_group_sessions(account.key, needed)
            machine.load_inbound_group_sessions(records, replays)
            missing = machine.missing_inbound_group_sessions(needed)
            if missing:
                await _copy_from_siblings(account, missing)
        results = [machine.decrypt_room_event(s.room_id, s.event) for s in slots]
    return results


async def decrypt_slots(
    account: Account,
    slots: list[Slot],
    wait_s: float = 0.0,
    may_wait: Callable[[Slot], bool] = lambda slot: True,
    upstream: Upstream | None = None,
) -> list[Result]:
    """Decrypt every slot; with `upstream`, a missing key is fetched from the key backup first
    (when we hold its key); with `wait_s`, keys still on their way (for the slots `may_wait`
    accepts) get that long to arrive. The final results are counted in the metrics."""
    if not slots:
        return []
    results = await _decrypt_waiting(account, slots, wait_s, may_wait, upstream)
    account.metrics.count_decryptions(results)
    return results


async def _decrypt_waiting(account: Account, slots: list[Slot], wait_s: float,
                           may_wait: Callable[[Slot], bool], upstream: Upstream | None
                           ) -> list[Result]:
    results = await _decrypt_now(account, slots)
    if upstream is not None:
        await _from_backup(upstream, account, slots, results)
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


async def _from_backup(upstream: Upstream, account: Account, slots: list[Slot],
                       results: list[Result]) -> None:
    """Missing room keys the key backup may hold, fetched before the client is told."""
    if account.machine.backup.decryption_key is None:
        return
    missing: dict[tuple[str, str], list[int]] = {}
    for i, result in enumerate(results):
        if (isinstance(result, DecryptionFailure) and result.session_id is not None
                and result.reason is FailureReason.MISSING_SESSION):
            missing.setdefault((slots[i].room_id, result.session_id), []).append(i)
    found = [key for key in list(missing)[:MAX_BACKUP_FETCHES]
             if await restore_one(upstream, account, *key)]
    retry = [i for key in found for i in missing[key]]
    if retry:
        for i, result in zip(retry, await _decrypt_now(account, [slots[i] for i in retry]),
                             strict=True):
            results[i] = result


async def ask_own_devices(account: Account, slots: list[Slot], results: list[Result]) -> None:
    """Keys still missing (not withheld) after the wait: ask our verified devices for them
    (the engine asks once per session)."""
    missing = [slot for slot, result in zip(slots, results, strict=True)
               if isinstance(result, DecryptionFailure) and result.withheld_code is None
               and result.reason is FailureReason.MISSING_SESSION]
    if missing:
        async with account.step(wake=True) as step:
            for slot in missing:
                step.machine.request_room_key(slot.room_id, slot.event)


def _waitable(result: Result) -> bool:
    return (
        isinstance(result, DecryptionFailure)
        and result.reason in WAITABLE
        and result.withheld_code is None
    )
