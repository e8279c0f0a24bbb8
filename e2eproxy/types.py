"""Distinct id types, so a room id is never passed where a user id belongs."""

from typing import NewType

UserId = NewType("UserId", str)
DeviceId = NewType("DeviceId", str)
RoomId = NewType("RoomId", str)
SessionId = NewType("SessionId", str)
