"""A store whose commits can be made to fail: the disk filling up, a database going away, at a
chosen save. The real MemoryStore underneath; the failing save applies nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import StoreError
from e2eproxy.store import AccountKey, MemoryStore


class FailingSaves(MemoryStore):
    """`fail_save(account, nth)`: the `nth` save of `account`'s engine changes from now raises
    StoreError (once) instead of committing. `failed` counts the saves refused so far, `saves`
    every save asked for, by account."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._armed: dict[AccountKey, int] = {}
        self.failed = 0
        self.saves: dict[AccountKey, int] = {}

    def fail_save(self, account: AccountKey, nth: int = 1) -> None:
        self._armed[account] = nth

    async def save(
        self,
        account: AccountKey,
        changes: Changes,
        *,
        sync_tokens: Mapping[str, str] | None = None,
        txns: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.saves[account] = self.saves.get(account, 0) + 1
        left = self._armed.get(account)
        if left is not None:
            if left <= 1:
                del self._armed[account]
                self.failed += 1
                raise StoreError("injected: the store could not commit (disk full)")
            self._armed[account] = left - 1
        await super().save(account, changes, sync_tokens=sync_tokens, txns=txns)
