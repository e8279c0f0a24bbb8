"""Sync bodies into the engine: every /sync that passes the proxy (the client's and the
background one) is applied in one step, committed with its stream's next token before the
answer goes anywhere (its next ``since`` deletes the to-device messages on the server)."""

from __future__ import annotations

from typing import Any

from e2eproxy.crypto.results import SyncResult
from e2eproxy.protocol.rewrite import sync_room_parts, verification_events
from e2eproxy.proxy.account import Account

# The two sync streams fed to the engine; each keeps its own token in the store.
CLIENT_STREAM = "client"
BACKGROUND_STREAM = "background"


async def process_sync(account: Account, body: dict[str, Any], stream: str, *,
                       initial: bool = False, key_uploads: int | None = None) -> SyncResult:
    """Feed a /sync body to the engine and persist it with the stream's next token.

    ``initial``: a sync without a position, which lists no device changes: whatever changed
    before it (a member's new device or cross-signing keys) is never reported, so every
    tracked user is queried again. ``key_uploads``: ``machine.key_uploads`` read just before
    the sync was requested (a body older than our latest key upload may report the keys it
    replaced as used up)."""
    token = body.get("next_batch")
    async with account.step(wake=True) as step:
        result = step.machine.receive_sync(body, key_uploads_at_request=key_uploads)
        if result.sessions_to_load:  # our verified devices asked for them: answered on load
            records, replays = await account.store.load_inbound_group_sessions(
                account.key, result.sessions_to_load)
            step.machine.load_inbound_group_sessions(records, replays)
        if initial:
            step.machine.mark_all_tracked_users_dirty()
        if isinstance(token, str):
            step.persist(sync_tokens={stream: token})
    for room_id in membership_changes(body):
        account.members_changed(room_id)
    if result.room_keys:
        account.wake_backup()
        await account.notify_keys()
    return result


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
