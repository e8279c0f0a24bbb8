"""Which device a request belongs to, and the life cycle of the accounts behind the proxy.

The crypto device is the device the client's own login created (ARCHITECTURE.md, "Who holds the
keys"): the proxy never makes a second one. A token it has not seen is resolved once with
/account/whoami and cached for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from e2eproxy.config import DEFAULT_MAX_ACCOUNTS
from e2eproxy.crypto.changes import EngineSnapshot
from e2eproxy.crypto.machine import OlmMachine
from e2eproxy.crypto.settings import SharingStrategy
from e2eproxy.errors import HomeserverFailed, MatrixError, StoreError, StoreLocked, UpstreamError
from e2eproxy.monitoring.metrics import Metrics
from e2eproxy.proxy.account import HOMESERVER_SECRET, Account
from e2eproxy.proxy.keyed_locks import KeyedLocks
from e2eproxy.proxy.lease_keeper import keep_leases
from e2eproxy.proxy.upstream import Upstream
from e2eproxy.proxy.worker import start_worker, stop_worker
from e2eproxy.store import LEASE_MS, AccountKey, Store
from e2eproxy.timing import Timer
from e2eproxy.types import DeviceId, UserId

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKEN_TTL_S = 600.0
# Stored accounts restored at a time when the proxy starts (see load_stored).
RESTORE_CONCURRENCY = 16
TOKEN_SWEEP_AT = 1_024
# A process that died holding a lease keeps it until it expires: wait that long, and a bit.
LEASE_WAIT_MS = LEASE_MS + 2_000
TOKEN_SECRET = "access_token"
FOREIGN_DEVICE = (
    "e2eproxy does not hold the encryption keys of this device (it was logged in without the "
    "proxy, and its keys on the server can never be replaced). Log in again through e2eproxy "
    "to use encrypted rooms."
)
NO_DEVICE = "This access token has no device, so e2eproxy cannot encrypt or decrypt for it."
TOO_MANY_ACCOUNTS = (
    "e2eproxy already holds the keys of as many devices as it is configured for, so it holds "
    "none for this one. Ask its operator (servers.NAME.max_accounts)."
)
OTHER_HOMESERVER = (
    "e2eproxy holds this user and device for another homeserver it serves; it holds no keys "
    "for the same IDs here."
)
OTHER_SERVER = (
    "This user belongs to another server than the homeserver e2eproxy serves here, so e2eproxy "
    "holds no keys for it."
)


@dataclass
class TokenInfo:
    user_id: str
    device_id: str | None
    account: Account | None
    refusal: str | None
    expires: float


def token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.query.get("access_token") or None


class AccountRegistry:
    """The accounts of one homeserver behind the proxy, by device and by token."""

    def __init__(
        self,
        upstream: Upstream,
        store: Store,
        timer: Timer,
        strategy: SharingStrategy,
        *,
        server_name: str | None = None,
        max_accounts: int = DEFAULT_MAX_ACCOUNTS,
        on_new_account: Callable[[Account], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics or Metrics()
        self.homeserver = str(upstream.base_url)
        self.store = store
        self.timer = timer
        self.strategy = strategy
        # Users of other servers are never given keys here: configured, or else pinned by the
        # first account the homeserver itself confirmed (or found in the store).
        self.server_name = server_name
        # An open-registration homeserver must not make the proxy create keys without end.
        self.max_accounts = max_accounts
        # Called for a device the proxy has just created keys for (a new login): a bot's
        # automatic recovery, for one.
        self.on_new_account = on_new_account
        self.accounts: dict[AccountKey, Account] = {}
        self.tokens: dict[str, TokenInfo] = {}
        # One attach (or takeover) of a device at a time, while other devices go on: one may
        # wait for its lease for a whole lease term (a stalled or dead holder).
        self._device_locks: KeyedLocks[AccountKey] = KeyedLocks()
        # Keys are created one at a time, so max_accounts holds.
        self._create_lock = asyncio.Lock()
        self._lease_task: asyncio.Task[None] | None = None
        # Stored accounts adopt_unheld never takes: of another homeserver, or without a token.
        self._not_ours: set[AccountKey] = set()

    # -- start and stop ------------------------------------------------------------------
    async def load_stored(self) -> None:
        """Restore every stored account of this homeserver and start its worker.

        A few at a time (RESTORE_CONCURRENCY): each reads the store and builds an engine, and a
        thousand at once would only queue at the store's one thread, holding every snapshot in
        memory meanwhile. A lease left by a crashed process is waited for by each in turn, but
        they all expire together, so the wait is paid about once. The first syncs then queue
        at the upstream's catch-up gate (worker.py)."""
        gate = asyncio.Semaphore(RESTORE_CONCURRENCY)

        async def bound(work: Awaitable[T]) -> T:
            async with gate:
                return await work

        keys = await self.store.list_accounts()
        tokens = await asyncio.gather(*(bound(self._stored_token(key)) for key in keys))
        # In the store's order: the first user pins the server name when none is configured.
        mine = [(key, token) for key, token in zip(keys, tokens, strict=True)
                if token is not None and self._of_this_server(key.user_id)]
        await asyncio.gather(*(bound(self._restore_at_start(key, token)) for key, token in mine))
        if self._lease_task is None:
            self._lease_task = asyncio.create_task(keep_leases(self), name="store leases")

    async def _stored_token(self, key: AccountKey) -> str | None:
        """The stored access token of an account of this homeserver, else None."""
        if await self.store.get_secret(key, HOMESERVER_SECRET) != self.homeserver:
            return None
        return await self.store.get_secret(key, TOKEN_SECRET)

    async def _restore_at_start(self, key: AccountKey, token: str) -> None:
        # Never waited for, nor asked of its holder: another live instance drives it (a dead
        # one's lease expires, and adopt_unheld then takes it).
        try:
            await self._restore(key, token, wait_ms=0, want=False)
        except StoreLocked:
            log.info("Not driving %s %s yet: another e2eproxy process holds its lease",
                     key.user_id, key.device_id)

    async def adopt_unheld(self) -> int:
        """Take over the stored accounts of this homeserver that no instance drives (another
        one died or stopped, or handed one over to an instance that never took it): their
        background work (to-device messages, key requests, device lists) must go on before a
        request for them comes. Returns how many were taken."""
        taken = 0
        for key in await self.store.unheld_accounts():
            if key in self.accounts or key in self._not_ours:
                continue
            token = await self._stored_token(key)
            if token is None or not self._of_this_server(key.user_id):
                self._not_ours.add(key)
                continue
            async with self._device_locks.hold(key):
                if key in self.accounts:
                    continue
                try:
                    account = await self._restore(key, token, wait_ms=0, want=False)
                except StoreLocked:  # another instance was quicker
                    continue
            if account is not None:
                log.info("Took over %s %s: no e2eproxy process was driving it",
                         key.user_id, key.device_id)
                taken += 1
        return taken

    async def close(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        for account in list(self.accounts.values()):
            await stop_worker(account)
            await self.store.release_lease(account.key)
        self.accounts.clear()
        self.tokens.clear()

    # -- accounts ------------------------------------------------------------------------
    async def _restore(self, key: AccountKey, token: str, *, wait_ms: int = LEASE_WAIT_MS,
                       want: bool = True) -> Account | None:
        if not await self.store.has_account(key):
            return None
        # The lease first, then the snapshot: loaded before, it could be the state another
        # process was still changing, and our saves would then undo its ratchets.
        await self.store.acquire_lease(key, wait_ms=wait_ms, want=want)
        snapshot = await self.store.load_snapshot(key)
        if snapshot is None:  # logged out meanwhile
            await self.store.release_lease(key)
            return None
        return self._activate(key, self._machine_of(key, snapshot), token)

    def _machine_of(self, key: AccountKey, snapshot: EngineSnapshot) -> OlmMachine:
        machine = OlmMachine.restore(key.user_id, key.device_id, self.timer, snapshot)
        machine.set_sharing_strategy(self.strategy)
        return machine

    async def _reload(self, key: AccountKey) -> OlmMachine:
        """The engine of `key` as the store holds it (after a failed commit)."""
        snapshot = await self.store.load_snapshot(key)
        if snapshot is None:
            raise StoreError(f"the store no longer holds {key.user_id} {key.device_id}")
        return self._machine_of(key, snapshot)

    def _activate(self, key: AccountKey, machine: OlmMachine, token: str) -> Account:
        account = Account(
            key=key, machine=machine, store=self.store, access_token=token,
            homeserver=self.homeserver, timer=self.timer,
            reload=lambda: self._reload(key), metrics=self.metrics,
        )
        self.accounts[key] = account
        start_worker(self.upstream, account)
        return account

    async def _create(self, key: AccountKey, token: str) -> Account:
        await self.store.acquire_lease(key, wait_ms=LEASE_WAIT_MS)
        machine = OlmMachine(key.user_id, key.device_id, self.timer)
        account = Account(
            key=key, machine=machine, store=self.store, access_token=token,
            homeserver=self.homeserver, timer=self.timer,
            reload=lambda: self._reload(key), metrics=self.metrics,
        )
        # The identity is saved before its keys are uploaded: keys uploaded and then lost
        # would brick the device id for good.
        async with account.step():
            pass
        await self.store.put_secret(key, TOKEN_SECRET, token)
        await self.store.put_secret(key, HOMESERVER_SECRET, self.homeserver)
        machine.set_sharing_strategy(self.strategy)
        self.accounts[key] = account
        start_worker(self.upstream, account)
        if self.on_new_account is not None:
            self.on_new_account(account)
        return account

    def _of_this_server(self, user_id: str) -> bool:
        """Whether `user_id` is of the server this registry serves; the first user asked about
        pins the server name when none is configured (callers ask only about users the
        homeserver itself vouched for)."""
        server = user_id.partition(":")[2]
        if self.server_name is None and server:
            self.server_name = server
        return bool(server) and server == self.server_name

    async def confirm_login(self, user_id: str, device_id: str, token: str, *,
                            new_device: bool = False) -> TokenInfo | None:
        """Bind a login answer's token, once the configured homeserver says (whoami) that it is
        this user's device: an answer alone is no proof, and binding a stored account to a
        stranger's token would hand over its keys. None when it does not match.

        ``new_device``: the login named no device, so the server made this one for it, and it
        has no keys anywhere yet (they are not asked for)."""
        try:
            confirmed = await self.whoami(token)
        except (MatrixError, UpstreamError) as exc:
            log.warning("Login of %s %s not confirmed by the homeserver: %s", user_id, device_id,
                        exc)
            return None
        if confirmed != (user_id, device_id):
            log.warning(
                "A login answer named %s %s but its token is %s %s: not attached",
                user_id, device_id, *confirmed,
            )
            return None
        return await self.attach(user_id, device_id, token, new_device=new_device)

    async def attach(self, user_id: str, device_id: str, token: str, *,
                     new_device: bool = False) -> TokenInfo:
        """Bind a token to its device's account: restore it, create it, or refuse it. Only for
        a (user, device, token) the homeserver confirmed."""
        key = AccountKey(UserId(user_id), DeviceId(device_id))
        async with self._device_locks.hold(key):
            if self._of_this_server(user_id):
                account, refusal = await self._bind(key, token, new_device)
            else:
                log.warning("Not holding keys for %s: not a user of %s", user_id,
                            self.server_name)
                account, refusal = None, OTHER_SERVER
        expires = self.timer.monotonic() + TOKEN_TTL_S
        info = TokenInfo(user_id, device_id, account, refusal, expires)
        self._remember(token, info)
        return info

    async def _bind(self, key: AccountKey, token: str, new_device: bool = False
                    ) -> tuple[Account | None, str | None]:
        """(account, None), or (None, why this token gets no keys). Call with the device's
        lock."""
        self._not_ours.discard(key)
        account = self.accounts.get(key)
        if account is not None:
            if account.access_token != token:
                account.new_token(token)
                await self.store.put_secret(key, TOKEN_SECRET, token)
            return account, None
        if await self.store.has_account(key) and (
            await self.store.get_secret(key, HOMESERVER_SECRET) != self.homeserver
        ):
            # The same user and device ID of another homeserver: its keys are not these.
            log.warning("Not holding keys for %s %s: the store holds them for another "
                        "homeserver", key.user_id, key.device_id)
            return None, OTHER_HOMESERVER
        account = await self._restore(key, token)
        if account is not None:
            return account, None
        if not new_device and await self._device_has_keys(key.user_id, key.device_id, token):
            return None, FOREIGN_DEVICE
        async with self._create_lock:
            if len(self.accounts) >= self.max_accounts:
                log.warning(
                    "Not creating keys for %s %s: this listener holds its maximum of %d devices "
                    "(servers.NAME.max_accounts)", key.user_id, key.device_id, self.max_accounts,
                )
                return None, TOO_MANY_ACCOUNTS
            return await self._create(key, token), None

    def _remember(self, token: str, info: TokenInfo) -> None:
        # Refreshed tokens are never asked for again: sweep the expired ones now and then, or a
        # proxy running for months would keep every token it ever saw.
        if len(self.tokens) >= TOKEN_SWEEP_AT:
            now = self.timer.monotonic()
            for old in [t for t, i in self.tokens.items() if i.expires <= now]:
                del self.tokens[old]
        self.tokens[token] = info

    async def _device_has_keys(self, user_id: str, device_id: str, token: str) -> bool:
        status, body = await self.upstream.request_json(
            "POST",
            "/_matrix/client/v3/keys/query",
            access_token=token,
            body={"device_keys": {user_id: [device_id]}},
        )
        if status != 200 or not isinstance(body, dict):
            raise HomeserverFailed("Could not check this device's keys on the server")
        devices = body.get("device_keys", {}).get(user_id, {})
        return isinstance(devices, dict) and device_id in devices

    async def remove(self, account: Account) -> None:
        """Forget an account (logout): its keys leave the store."""
        await self.let_go(account, release=False)
        await self.store.delete_account(account.key)

    async def let_go(self, account: Account, *, release: bool) -> None:
        """Stop driving an account here (its worker stops; its tokens resolve afresh)."""
        await stop_worker(account)
        if self.accounts.get(account.key) is account:
            del self.accounts[account.key]
        for token, info in list(self.tokens.items()):
            if info.account is account:
                del self.tokens[token]
        if release:
            await self.store.release_lease(account.key)

    def forget_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    # -- tokens --------------------------------------------------------------------------
    async def whoami(self, token: str) -> tuple[str, str | None]:
        """(user_id, device_id) of a token, asking the homeserver; its errors are raised."""
        status, body = await self.upstream.request_json(
            "GET", "/_matrix/client/v3/account/whoami", access_token=token
        )
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("user_id"), str):
            self.tokens.pop(token, None)
            if isinstance(body, dict) and isinstance(body.get("errcode"), str):
                raise MatrixError(
                    str(body.get("error", "")), status=status, errcode=body["errcode"]
                )
            raise UpstreamError(502, "The homeserver could not identify this access token")
        device_id = body.get("device_id")
        return body["user_id"], device_id if isinstance(device_id, str) else None

    async def resolve(self, token: str) -> TokenInfo:
        """The device behind a token; asks /account/whoami once per TTL."""
        info = self.tokens.get(token)
        if info is not None and info.expires > self.timer.monotonic():
            return info
        user_id, device_id = await self.whoami(token)
        if device_id is None:
            expires = self.timer.monotonic() + TOKEN_TTL_S
            info = TokenInfo(user_id, None, None, NO_DEVICE, expires)
            self._remember(token, info)
            return info
        return await self.attach(user_id, device_id, token)

    async def revalidate(self, token: str) -> TokenInfo:
        """The token's device as the homeserver sees it now, not as cached: for an answer the
        proxy gives by itself. Raises the server's error (401 M_UNKNOWN_TOKEN) for a dead one."""
        self.forget_token(token)
        return await self.resolve(token)

    async def for_request(self, request: web.Request) -> TokenInfo | None:
        """The token's device, or None for a request without a token."""
        token = token_of(request)
        if token is None:
            return None
        return await self.resolve(token)
