"""Distinct id types, so a room id is never passed where a user id belongs."""

from typing import NewType

UserId = NewType("UserId", str)
DeviceId = NewType("DeviceId", str)
RoomId = NewType("RoomId", str)
EventId = NewType("EventId", str)
SessionId = NewType("SessionId", str)
TransactionId = NewType("TransactionId", str)
