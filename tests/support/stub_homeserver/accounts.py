"""Users, devices, access tokens, login tokens, filters and account data."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import MatrixError, forbidden, not_found

JsonDict = dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Device:
    device_id: str
    display_name: str | None = None
    created_ts: int = field(default_factory=now_ms)


@dataclass
class AccountData:
    position: int
    content: JsonDict


@dataclass
class User:
    user_id: str
    password: str
    devices: dict[str, Device] = field(default_factory=dict)
    account_data: dict[str, AccountData] = field(default_factory=dict)
    room_account_data: dict[str, dict[str, AccountData]] = field(default_factory=dict)
    filters: list[JsonDict] = field(default_factory=list)


@dataclass(frozen=True)
class Session:
    """What an access token stands for."""

    user_id: str
    device_id: str
    access_token: str


class Accounts:
    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.users: dict[str, User] = {}
        self.sessions: dict[str, Session] = {}
        self.login_tokens: dict[str, str] = {}

    # users

    def user_id_for(self, name: str) -> str:
        """``alice`` or ``@alice:server`` -> ``@alice:server``."""
        return name if name.startswith("@") else f"@{name}:{self.server_name}"

    def add_user(self, localpart: str, password: str) -> User:
        user_id = self.user_id_for(localpart)
        if user_id in self.users:
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")
        user = User(user_id=user_id, password=password)
        self.users[user_id] = user
        return user

    def user(self, user_id: str) -> User:
        try:
            return self.users[user_id]
        except KeyError:
            raise not_found(f"Unknown user {user_id}") from None

    def check_password(self, name: str, password: str) -> User:
        user = self.users.get(self.user_id_for(name))
        if user is None or user.password != password:
            raise forbidden("Invalid username or password")
        return user

    # devices and tokens

    def ensure_device(
        self, user_id: str, device_id: str | None, display_name: str | None
    ) -> tuple[Device, bool]:
        """Return the device, creating it if needed; the flag says whether it is new."""
        user = self.user(user_id)
        if device_id and device_id in user.devices:
            device = user.devices[device_id]
            if display_name is not None:
                device.display_name = display_name
            return device, False
        device_id = device_id or secrets.token_hex(5).upper()
        device = Device(device_id=device_id, display_name=display_name)
        user.devices[device_id] = device
        return device, True

    def issue_token(self, user_id: str, device_id: str) -> Session:
        session = Session(user_id, device_id, "syt_" + secrets.token_urlsafe(24))
        self.sessions[session.access_token] = session
        return session

    def revoke_device_tokens(self, user_id: str, device_id: str) -> None:
        for token, session in list(self.sessions.items()):
            if session.user_id == user_id and session.device_id == device_id:
                del self.sessions[token]

    def remove_device(self, user_id: str, device_id: str) -> bool:
        self.revoke_device_tokens(user_id, device_id)
        return self.user(user_id).devices.pop(device_id, None) is not None

    def session(self, access_token: str | None) -> Session:
        if not access_token:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token.")
        session = self.sessions.get(access_token)
        if session is None:
            raise MatrixError(
                401, "M_UNKNOWN_TOKEN", "Invalid access token passed.", soft_logout=False
            )
        return session

    def mint_login_token(self, user_id: str) -> str:
        self.user(user_id)
        token = "slt_" + secrets.token_urlsafe(16)
        self.login_tokens[token] = user_id
        return token

    def redeem_login_token(self, token: str) -> User:
        user_id = self.login_tokens.pop(token, None)
        if user_id is None:
            raise forbidden("Invalid login token")
        return self.user(user_id)

    # filters

    def add_filter(self, user_id: str, definition: JsonDict) -> str:
        filters = self.user(user_id).filters
        filters.append(definition)
        return str(len(filters) - 1)

    def get_filter(self, user_id: str, filter_id: str) -> JsonDict:
        filters = self.user(user_id).filters
        if not filter_id.isdigit() or int(filter_id) >= len(filters):
            raise not_found("No such filter")
        return filters[int(filter_id)]

    # account data

    def set_account_data(
        self, user_id: str, event_type: str, content: JsonDict, position: int,
        room_id: str | None = None,
    ) -> None:
        user = self.user(user_id)
        target = (
            user.account_data if room_id is None
            else user.room_account_data.setdefault(room_id, {})
        )
        target[event_type] = AccountData(position, content)

    def get_account_data(
        self, user_id: str, event_type: str, room_id: str | None = None
    ) -> JsonDict:
        user = self.user(user_id)
        source = user.account_data if room_id is None else user.room_account_data.get(room_id, {})
        entry = source.get(event_type)
        if entry is None:
            raise not_found("Account data not found")
        return entry.content
