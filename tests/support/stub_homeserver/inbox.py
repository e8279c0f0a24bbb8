"""Per-device to-device inboxes. A message stays until a /sync acknowledges it by passing
a ``since`` at or past the position of the batch that delivered it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .accounts import Accounts
from .stream import Stream

JsonDict = dict[str, Any]


@dataclass
class Inbox:
    messages: list[tuple[int, JsonDict]] = field(default_factory=list)


class ToDeviceInboxes:
    def __init__(self, accounts: Accounts, stream: Stream) -> None:
        self.accounts = accounts
        self.stream = stream
        self.inboxes: dict[tuple[str, str], Inbox] = {}
        self.seen_txns: set[tuple[str, str, str]] = set()

    def inbox(self, user_id: str, device_id: str) -> Inbox:
        return self.inboxes.setdefault((user_id, device_id), Inbox())

    def send(
        self, sender: str, sender_device: str, txn_id: str, event_type: str,
        messages: dict[str, dict[str, JsonDict]],
    ) -> bool:
        """Queue the messages once per (sender, device, txn); returns False for a retry."""
        key = (sender, sender_device, txn_id)
        if key in self.seen_txns:
            return False
        self.seen_txns.add(key)
        position = self.stream.advance()
        for user_id, by_device in messages.items():
            user = self.accounts.users.get(user_id)
            if user is None:
                continue
            for device_id, content in by_device.items():
                targets = list(user.devices) if device_id == "*" else [device_id]
                for target in targets:
                    if target not in user.devices:
                        continue
                    event = {
                        "type": event_type, "sender": sender,
                        "content": copy.deepcopy(content),
                    }
                    self.inbox(user_id, target).messages.append((position, event))
        return True

    def acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        inbox = self.inbox(user_id, device_id)
        inbox.messages = [(pos, ev) for pos, ev in inbox.messages if pos > upto]

    def pending(self, user_id: str, device_id: str, upto: int) -> list[JsonDict]:
        inbox = self.inbox(user_id, device_id)
        return [copy.deepcopy(ev) for pos, ev in inbox.messages if pos <= upto]

    def forget_device(self, user_id: str, device_id: str) -> None:
        self.inboxes.pop((user_id, device_id), None)
