"""The sans-I/O end-to-end encryption engine (see ``machine.OlmMachine``).

How the I/O shell drives it, each call inside one `Account.step()` (lock, call, commit):

1. every ``/sync`` body -> ``machine.receive_sync(body)``; then
   ``store.save(machine.take_changes())`` *before* the sync response (and its
   ``next_batch``) is acknowledged;
2. ``machine.outgoing_requests()`` -> save changes -> send each request -> report with
   ``mark_request_as_sent(id, json)`` or ``mark_request_as_failed(id, error)`` -> save changes;
3. to send into an encrypted room: call ``share_room_key(room, members)`` until it returns no
   ``KEYS_QUERY``/``KEYS_CLAIM`` request (saving and sending in between; to-device requests are
   handed out by this call, not again by ``outgoing_requests``), then ``encrypt(room, type,
   content)``; if a to-device request fails, the room's session is discarded automatically;
4. to decrypt: ``sessions_needed(room, events)`` -> load those from the store ->
   ``load_inbound_group_sessions(records, replay_entries)`` -> ``decrypt_room_event``.

Restart: ``OlmMachine.restore(user_id, device_id, clock, snapshot)`` (``changes.EngineSnapshot``).
"""
