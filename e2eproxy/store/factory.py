"""Open the store the configuration names."""

from __future__ import annotations

from e2eproxy.config import StoreConfig
from e2eproxy.store.sqlite import SqliteStore


async def open_store(config: StoreConfig, passphrase: str | None) -> SqliteStore:
    """The configured store, opened; pass ``Config.store_passphrase()`` as ``passphrase``.

    Raises ``WrongPassphrase``, ``MigrationError`` or ``StoreError`` with one clear line.
    """
    store = SqliteStore(config.data_dir, passphrase=passphrase, use_keyring=config.use_keyring)
    await store.open()
    return store
