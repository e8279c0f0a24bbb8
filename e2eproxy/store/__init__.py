"""The encrypted local store: see ``base.Store`` for the contract and ``secrets`` for the keys."""

from __future__ import annotations

from e2eproxy.store.base import LEASE_MS, RENEW_EVERY_MS, AccountKey, Lease, Store
from e2eproxy.store.factory import open_store
from e2eproxy.store.memory import MemoryStore
from e2eproxy.store.room_keys import export_room_keys, import_room_keys
from e2eproxy.store.sqlite import SqliteStore

__all__ = [
    "LEASE_MS",
    "RENEW_EVERY_MS",
    "AccountKey",
    "Lease",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "export_room_keys",
    "import_room_keys",
    "open_store",
]
