"""Open the store the configuration names: PostgreSQL for ``store.url``, else SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2eproxy.config import StoreConfig
from e2eproxy.errors import StoreError
from e2eproxy.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from e2eproxy.store.postgres import PostgresStore


async def open_store(config: StoreConfig, passphrase: str | None, *, site: str | None = None
                     ) -> SqliteStore | PostgresStore:
    """The configured store, opened; pass ``Config.store_passphrase()`` as ``passphrase``, and
    the serving process's data dir claim as ``site`` (see RecordStore).

    Raises ``WrongPassphrase``, ``MigrationError`` or ``StoreError`` with one clear line.
    """
    store: SqliteStore | PostgresStore
    if config.url is not None:
        try:  # imported here: an SQLite install needs no PostgreSQL driver
            from e2eproxy.store.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"store.url needs the PostgreSQL driver ({exc.name} is missing): "
                "pip install 'e2eproxy[postgres]'"
            ) from exc
        store = PostgresStore(config.url, config.data_dir, passphrase=passphrase,
                              use_keyring=config.use_keyring, site=site)
    else:
        store = SqliteStore(config.data_dir, passphrase=passphrase,
                            use_keyring=config.use_keyring, site=site)
    await store.open()
    return store
