"""Sync bodies into the engine: every /sync that passes the proxy (the client's and the
background one) is applied in one step, committed with its stream's next token before the
answer goes anywhere (its next ``since`` deletes the to-device messages on the server).

A body with nothing in it (no to-device event, no device list change, no room, the same key
counts: an idle account's long-poll that timed out) is applied but not written: its token is
saved with the next body that carries something, or after TOKEN_SAVE_EVERY_S. Nothing is lost
by that: a restart resumes from the older token, and the server sends again all that came
after it, which is only what the unsaved empty bodies held (nothing) and what came after them.
The to-device messages the server deleted when we asked past that older token were in bodies
that were saved, each before the request that acknowledged it.
"""

from __future__ import annotations

import json
from typing import Any

from e2eproxy.crypto.results import SyncResult
from e2eproxy.protocol.rewrite import sync_room_parts, verification_events
from e2eproxy.proxy.account import Account

# The two sync streams fed to the engine; each keeps its own token in the store.
CLIENT_STREAM = "client"
BACKGROUND_STREAM = "background"
# An idle stream's token is still saved this often, so a restart never resumes from far back
# (an old position costs the homeserver a long catch-up).
TOKEN_SAVE_EVERY_S = 300.0
# In every answer, and news only when they change (the key counts, compared separately).
_ALWAYS_THERE = frozenset({
    "next_batch", "device_one_time_keys_count", "device_unused_fallback_key_types",
    "org.matrix.msc2732.device_unused_fallback_key_types",
})
_COUNTS = "sync_counts"
_SAVED_AT = "sync_token_saved_at"


async def process_sync(account: Account, body: dict[str, Any], stream: str, *,
                       initial: bool = False, key_uploads: int | None = None) -> SyncResult:
    """Feed a /sync body to the engine and persist it with the stream's next token (an empty
    body's token waits: see the module docstring).

    ``initial``: a sync without a position, which lists no device changes: whatever changed
    before it (a member's new device or cross-signing keys) is never reported, so every
    tracked user is queried again. ``key_uploads``: ``machine.key_uploads`` read just before
    the sync was requested (a body older than our latest key upload may report the keys it
    replaced as used up)."""
    token = body.get("next_batch")
    # Worth a commit (and a wake of the outgoing loop): see the module docstring.
    moved = _counts_moved(account, stream, body)
    durable = initial or moved or carries_news(body) or _save_due(account, stream)
    async with account.step(wake=durable) as step:
        result = step.machine.receive_sync(body, key_uploads_at_request=key_uploads)
        if result.sessions_to_load:  # our verified devices asked for them: answered on load
            records, replays = await account.store.load_inbound_group_sessions(
                account.key, result.sessions_to_load)
            step.machine.load_inbound_group_sessions(records, replays)
        if initial:
            step.machine.mark_all_tracked_users_dirty()
        if isinstance(token, str) and durable:
            step.persist(sync_tokens={stream: token})
    account.synced_at = account.timer.monotonic()
    account.metrics.count_to_device_received(result.to_device_types)
    if durable:
        account.extras.setdefault(_SAVED_AT, {})[stream] = account.synced_at
    for room_id in membership_changes(body):
        account.members_changed(room_id)
    if result.room_keys:
        account.wake_backup()
        await account.notify_keys()
    return result


def carries_news(body: dict[str, Any]) -> bool:
    """Whether a sync body holds anything but its position and key counts: events of any
    kind, device list changes, any room at all (an empty list or section is nothing; an
    unknown field is news)."""
    for key, value in body.items():
        if key == "rooms" and isinstance(value, dict):
            if any(value.values()):
                return True
        elif key not in _ALWAYS_THERE and _holds_something(value):
            return True
    return False


def _holds_something(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_something(v) for v in value.values())
    if isinstance(value, list):
        return bool(value)
    return value is not None


def _counts_moved(account: Account, stream: str, body: dict[str, Any]) -> bool:
    """Whether the key counts differ from the last body of this stream (a claimed one-time key
    must be replaced: the step wakes the outgoing loop and saves the count)."""
    counts = json.dumps([body.get(k) for k in sorted(_ALWAYS_THERE - {"next_batch"})])
    seen = account.extras.setdefault(_COUNTS, {})
    moved: bool = seen.get(stream) != counts
    seen[stream] = counts
    return moved


def _save_due(account: Account, stream: str) -> bool:
    saved = account.extras.setdefault(_SAVED_AT, {})
    now = account.timer.monotonic()
    # A stream seen first now counts as saved now: its stored token is where it started.
    due: bool = now - saved.setdefault(stream, now) >= TOKEN_SAVE_EVERY_S
    return due


def membership_changes(body: dict[str, Any]) -> set[str]:
    """Rooms whose member list this sync changed."""
    return {
        room_id
        for room_id, _, part in sync_room_parts(body, ("join",))
        if any(isinstance(e, dict) and e.get("type") == "m.room.member" for e in part["events"])
    }


async def feed_verifications(account: Account, body: dict[str, Any]) -> None:
    """In-room verification events of a (decrypted) sync body to the engine's flows; both
    streams carry them, and the engine handles each event once."""
    events = verification_events(body)
    if events:
        async with account.step(wake=True) as step:
            for room_id, event in events:
                step.machine.trust.receive_room_event(room_id, event)
