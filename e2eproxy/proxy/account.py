"""One proxied device at run time: its engine, its token, and the one way to drive the engine.

Every engine call in the shell goes through ``Account.step()``::

    async with account.step(wake=True) as step:
        result = step.machine.receive_sync(body)
        step.persist(sync_tokens={stream: token})

The step takes the account's ``lock``, runs the engine call(s) in its block, then commits what
the engine changed (with the sync tokens and txn answers that must be durable together with it)
before the lock is released, and wakes the outgoing loop so what the engine wants sent is sent
(matrix-rust-sdk's shape: call the machine, then ``outgoing_requests``/``mark_request_as_sent``).
Nothing derived from a step leaves the process before the step has committed (ARCHITECTURE.md,
rules 2-3). A block that raises commits nothing; the engine's pending changes go with the next
step. A commit that fails leaves the engine ahead of the store: before the next step it is
rebuilt from the store (``reload``), as if the failed step had never run; whatever it took in
(a sync's room keys) comes again, since nothing was acknowledged.

Lock order, outermost first; a lock is never taken while holding one listed after it:

1. ``outgoing_lock``: one drainer of the engine's outgoing requests; a room event of the
   engine's own (in-room verification) is encrypted and sent under it, taking the room lock;
2. ``room_lock(room)``: one room key share (and the encryption that follows) per room;
3. ``claim_lock``: one ``/keys/claim`` in flight (only around that HTTP request);
4. ``lock``: the engine step itself. It is held across store I/O only, never across a request
   to the homeserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.store import AccountKey, Store
from e2eproxy.timing import SystemTimer, Timer

log = logging.getLogger(__name__)

# A member list fetched from the server is trusted this long unless a membership event or a
# membership request through the proxy makes it stale first.
MEMBERS_TTL_S = 300.0
# The store secret naming the homeserver an account belongs to: several homeservers may share
# one store, and the same user ID on two of them is two accounts that share nothing.
HOMESERVER_SECRET = "homeserver"
# Where an account made without its registry's metrics counts (tests that build one by hand).
UNSERVED_METRICS = Metrics()


@dataclass(eq=False)
class Step:
    """What one engine step sees: the engine, and what must be saved with its changes."""

    machine: OlmMachine
    sync_tokens: dict[str, str] = field(default_factory=dict)
    txns: dict[str, dict[str, Any]] = field(default_factory=dict)

    def persist(self, *, sync_tokens: Mapping[str, str] | None = None,
                txns: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Save these in the same transaction as the step's engine changes."""
        self.sync_tokens.update(sync_tokens or {})
        self.txns.update(txns or {})


@dataclass(eq=False)
class Account:
    """The crypto state of one device behind the proxy.

    `lock` brackets every "engine step + store save" so steps never interleave and nothing is
    acted on before it is persisted (ARCHITECTURE.md, rules 2-3).
    """

    key: AccountKey
    machine: OlmMachine
    store: Store
    access_token: str
    # The homeserver URL it belongs to (HOMESERVER_SECRET in the store).
    homeserver: str = ""
    # The shell's time: token and member caches, retries, backoffs, the lease renewal.
    timer: Timer = field(default_factory=SystemTimer)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    claim_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    outgoing_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake_outgoing: asyncio.Event = field(default_factory=asyncio.Event)
    room_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    members: dict[str, tuple[float, list[str]]] = field(default_factory=dict)
    # Sync filters the client created, by id (a filter never changes once created).
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys_arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set when the homeserver says our token is dead: the worker waits for a new one.
    token_valid: asyncio.Event = field(default_factory=asyncio.Event)

    # Client long-polls in flight; the background sync pauses while there are any.
    client_polls: int = 0
    client_idle: asyncio.Event = field(default_factory=asyncio.Event)
    background_poll: asyncio.Future[Any] | None = None
    # Fire-and-forget work (held here so it is not garbage-collected mid-flight).
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Set when room keys may wait for the key backup uploader.
    backup_work: asyncio.Event = field(default_factory=asyncio.Event)
    # Run-time state of features that keep some per account (e.g. "backup": restore progress).
    extras: dict[str, Any] = field(default_factory=dict)
    # Builds the engine afresh from the store (set by the registry); None: never rebuilt.
    reload: Callable[[], Awaitable[OlmMachine]] | None = None
    # A commit failed after the engine had moved on: rebuild it before its next step.
    engine_ahead: bool = False
    metrics: Metrics = UNSERVED_METRICS
    # ``timer.monotonic()`` when a sync (either stream's) was last applied; at first, when the
    # account began to be driven here. The metrics' sync lag.
    synced_at: float = 0.0

    def __post_init__(self) -> None:
        self.token_valid.set()
        self.client_idle.set()
        self.synced_at = self.timer.monotonic()

    @contextlib.contextmanager
    def client_polling(self) -> Iterator[None]:
        """Around a client's /sync wait upstream: the client's stream carries the to-device
        messages now, so the background poll steps aside (cancelling it loses nothing)."""
        self.client_polls += 1
        self.client_idle.clear()
        if self.background_poll is not None:
            self.background_poll.cancel()
        try:
            yield
        finally:
            self.client_polls -= 1
            if self.client_polls == 0:
                self.client_idle.set()

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @property
    def user_id(self) -> str:
        return self.key.user_id

    @property
    def device_id(self) -> str:
        return self.key.device_id

    def room_lock(self, room_id: str) -> asyncio.Lock:
        return self.room_locks.setdefault(room_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def step(self, *, wake: bool = False) -> AsyncIterator[Step]:
        """The one way to drive the engine (see the module docstring): lock, the block's engine
        calls, commit; then, with ``wake``, the outgoing loop sends what the engine queued."""
        async with self.lock:
            if self.engine_ahead:
                await self._rebuild()
            step = Step(self.machine)
            yield step
            changes = self.machine.take_changes()
            if not changes.is_empty() or step.sync_tokens or step.txns:
                try:
                    started = time.perf_counter()
                    await self.store.save(self.key, changes,
                                          sync_tokens=step.sync_tokens or None,
                                          txns=step.txns or None)
                    self.metrics.observe_commit(self.store, time.perf_counter() - started)
                except BaseException as exc:
                    # Kept as it is, the engine would act on what the store lost (a room key
                    # it would never save, a to-device event it would skip as seen when the
                    # sync comes again, requests it thinks are being sent): rebuilt now, or
                    # (the store still failing, or this task cancelled) before the next step.
                    self.engine_ahead = self.reload is not None
                    if self.engine_ahead and isinstance(exc, Exception):
                        with contextlib.suppress(Exception):
                            await self._rebuild()
                    raise
        if wake:
            self.wake_outgoing.set()

    async def _rebuild(self) -> None:
        assert self.reload is not None
        self.machine = await self.reload()
        # Not waking the outgoing loop: the room key shares it saved are the next share's
        # to send (sent by the loop meanwhile, they would keep that share waiting), the rest
        # goes with the loop's next round.
        self.engine_ahead = False
        log.warning("Rebuilt the engine of %s from the store after a failed commit",
                    self.device_id)

    async def notify_keys(self) -> None:
        async with self.keys_arrived:
            self.keys_arrived.notify_all()

    async def wait_for_keys(self, timeout: float) -> bool:
        """Wait until new room keys arrive (True) or `timeout` seconds pass (False)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as the wait completes, and a task that ignores its cancel never stops.
        async with self.keys_arrived:
            try:
                async with asyncio.timeout(timeout):
                    await self.keys_arrived.wait()
            except TimeoutError:
                return False
            return True

    def wake_backup(self) -> None:
        self.backup_work.set()

    async def wait_for_backup_work(self, timeout: float) -> None:
        """Until new room keys may need backing up, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.backup_work.wait()
        self.backup_work.clear()

    def cached_members(self, room_id: str) -> list[str] | None:
        entry = self.members.get(room_id)
        if entry is None or self.timer.monotonic() - entry[0] > MEMBERS_TTL_S:
            return None
        return entry[1]

    def set_members(self, room_id: str, members: list[str]) -> None:
        self.members[room_id] = (self.timer.monotonic(), members)

    def members_changed(self, room_id: str) -> None:
        self.members.pop(room_id, None)

    def new_token(self, token: str) -> None:
        self.access_token = token
        self.token_valid.set()
