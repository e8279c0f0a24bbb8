"""``StubHomeserver``: the whole in-memory homeserver state plus the Python API tests use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .accounts import Accounts, Session
from .backupstore import BackupStore
from .faults import FaultRegistry
from .inbox import ToDeviceInboxes
from .keystore import KeyStore
from .mediastore import MediaStore
from .roomops import RoomOps
from .roomstore import Room, RoomStore
from .stream import Stream

JsonDict = dict[str, Any]
DEFAULT_MAX_UPLOAD = 100 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stub received it (``json`` is None for media and empty bodies)."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class StubHomeserver:
    """In-memory homeserver state. One instance per app; reach it as ``app[STUB_KEY]``.

    Attributes tests read directly: ``requests`` (every request received), ``faults``,
    ``rooms`` (raw stored events, via :meth:`raw_events`), ``keys``, ``to_device``,
    ``media``, ``backups``, ``accounts``, and ``internal_errors`` (unexpected exceptions,
    which a test fixture should assert to be empty).
    """

    def __init__(
        self, server_name: str = "stub.test", *, max_upload_size: int = DEFAULT_MAX_UPLOAD,
        omit_empty_sync_fields: bool = True,
    ) -> None:
        self.server_name = server_name
        self.omit_empty_sync_fields = omit_empty_sync_fields
        self.stream = Stream()
        self.accounts = Accounts(server_name)
        self.rooms = RoomStore(server_name, self.stream)
        self.room_ops = RoomOps(self.rooms)
        self.keys = KeyStore(self.accounts, self.stream)
        self.to_device = ToDeviceInboxes(self.accounts, self.stream)
        self.media = MediaStore(server_name, max_upload_size)
        self.backups = BackupStore()
        self.faults = FaultRegistry()
        self.requests: list[RecordedRequest] = []
        self.internal_errors: list[BaseException] = []
        self.txn_results: dict[tuple[str, str, str], JsonDict] = {}
        self.base_url: str | None = None

    # accounts and devices

    def register(self, user_localpart: str, password: str = "password") -> str:
        """Create a user (no device); returns the full user ID."""
        return self.accounts.add_user(user_localpart, password).user_id

    def login(
        self, user: str, password: str | None = None, *, device_id: str | None = None,
        display_name: str | None = None,
    ) -> Session:
        """Log in from Python (password checked if given); returns the new session."""
        user_id = self.accounts.user_id_for(user)
        if password is not None:
            self.accounts.check_password(user_id, password)
        return self.open_session(user_id, device_id, display_name)

    def open_session(
        self, user_id: str, device_id: str | None, display_name: str | None
    ) -> Session:
        device, created = self.accounts.ensure_device(user_id, device_id, display_name)
        if created:
            self.keys.mark_changed(user_id)
            self.stream.notify()
        return self.accounts.issue_token(user_id, device.device_id)

    def mint_login_token(self, user_id: str) -> str:
        """A one-use token for ``m.login.token``."""
        return self.accounts.mint_login_token(self.accounts.user_id_for(user_id))

    def delete_device(self, user_id: str, device_id: str) -> None:
        """Remove a device with its tokens, keys and inbox (a device-list change)."""
        if self.accounts.remove_device(user_id, device_id):
            self.keys.forget_device(user_id, device_id)
            self.to_device.forget_device(user_id, device_id)
            self.keys.mark_changed(user_id)
            self.stream.notify()

    def upload_keys(self, user_id: str, device_id: str, body: JsonDict) -> dict[str, int]:
        if self.keys.upload(user_id, device_id, body):
            self.keys.mark_changed(user_id)
            self.stream.notify()
        return self.keys.one_time_key_counts(user_id, device_id)

    def set_account_data(
        self, user_id: str, event_type: str, content: JsonDict, room_id: str | None = None
    ) -> None:
        position = self.stream.advance()
        self.accounts.set_account_data(user_id, event_type, content, position, room_id)
        self.stream.notify()

    def send_to_device(
        self, sender: str, sender_device: str, txn_id: str, event_type: str,
        messages: dict[str, dict[str, JsonDict]],
    ) -> None:
        if self.to_device.send(sender, sender_device, txn_id, event_type, messages):
            self.stream.notify()

    # rooms

    def create_room(self, creator: str, **body: Any) -> str:
        """Create a room as ``creator`` with a ``/createRoom`` body; returns the room ID."""
        return self.room_ops.create_room(creator, body).room_id

    def room(self, room_id_or_alias: str) -> Room:
        return self.rooms.room(room_id_or_alias)

    def raw_events(self, room_id: str) -> list[JsonDict]:
        """Exactly what the server stores for the room, oldest first (not copies)."""
        return [stored.event for stored in self.rooms.room(room_id).events]

    # inspection

    def requests_to(self, path_regex: str, method: str | None = None) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [
            r for r in self.requests
            if pattern.search(r.path) and (method is None or r.method == method.upper())
        ]

    def close(self) -> None:
        """Release long-polling /sync requests (called on app shutdown)."""
        self.stream.close()
