"""What the SQL backends share: their blocking driver runs on threads of their own, opened and
closed there, each ``run(fn)`` one transaction on one of them."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from e2eproxy.errors import StoreError
from e2eproxy.store.secrets import StoreKeys
from e2eproxy.store.txn import Txn

T = TypeVar("T")


class ThreadedBackend(ABC):
    """A backend whose every call runs on its executor (``threads`` of them, named ``name``)."""

    def __init__(self, threads: int, name: str) -> None:
        self._threads, self._thread_name = threads, name
        self._executor: ThreadPoolExecutor | None = None
        self._keys: StoreKeys | None = None

    @property
    def pickle_key(self) -> bytes:
        if self._keys is None:
            raise StoreError("the store is not open")
        return self._keys.pickle_key

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix=self._thread_name)
        try:
            await self._call(self._open_on_thread)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_on_thread)
        executor.shutdown(wait=True)

    async def run(self, fn: Callable[[Txn], T]) -> T:
        return await self._call(lambda: self._transaction(fn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @abstractmethod
    def _open_on_thread(self) -> None:
        """Connect, migrate and unlock the data key (sets ``_keys``)."""

    @abstractmethod
    def _close_on_thread(self) -> None: ...

    @abstractmethod
    def _transaction(self, fn: Callable[[Txn], T]) -> T: ...
