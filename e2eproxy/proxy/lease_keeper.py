"""One renewal loop per registry for every account's store lease (one transaction a round).

A lease that comes back lost (another instance took the account over, or drove it while this
one was paused) stops that account's work here at once: its engine state may be stale, and a
save would be refused anyway. A lease another instance asks for (a request for the account
reached it: the load balancer sent that token there) is handed over: the account's work stops,
then the lease is released, and that instance takes it within a round. Either way the account
leaves this registry; a later request here takes it back the same way.

Every few rounds the registry also takes over the accounts no instance drives any more (their
process died or stopped): one instance of several picks each up, so its background work goes on
before a request for it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from typing import TYPE_CHECKING

from e2eproxy.errors import StoreError
from e2eproxy.store import RENEW_EVERY_MS

if TYPE_CHECKING:
    from e2eproxy.proxy.registry import AccountRegistry

log = logging.getLogger(__name__)
# Instances started together should not renew in lock-step.
JITTER = 0.1
# Accounts nobody drives (their process died or stopped) are looked for every third round: a
# dead holder's lease runs LEASE_MS (10 s) anyway.
ADOPT_EVERY_ROUNDS = 3


async def keep_leases(registry: AccountRegistry) -> None:
    adopting: asyncio.Task[None] | None = None
    try:
        for round_number in itertools.count(1):
            await registry.timer.sleep(RENEW_EVERY_MS / 1000 * random.uniform(1 - JITTER, 1))
            await renew_round(registry)
            # Beside the renewals, never in their way: taking over many accounts takes a while.
            if round_number % ADOPT_EVERY_ROUNDS == 0 and (adopting is None or adopting.done()):
                adopting = asyncio.create_task(adopt_round(registry), name="adopt accounts")
    finally:
        if adopting is not None:
            adopting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await adopting


async def adopt_round(registry: AccountRegistry) -> None:
    try:
        registry.metrics.count_adoptions(await registry.adopt_unheld())
    except StoreError as exc:
        log.warning("could not look for accounts no e2eproxy process drives: %s", exc)


async def renew_round(registry: AccountRegistry) -> None:
    accounts = list(registry.accounts.values())
    if not accounts:
        return
    try:
        leases = await registry.store.renew_leases([a.key for a in accounts])
    except StoreError as exc:
        log.warning("could not renew the store leases: %s", exc)
        return
    for account in accounts:
        lease = leases.get(account.key)
        if lease is None or lease.reload:
            log.error("lost the store lease of %s %s to another process; no longer driving it "
                      "here", account.user_id, account.device_id)
            registry.metrics.count_lease_lost()
            await registry.let_go(account, release=False)
        elif lease.wanted:
            log.warning("handing %s %s over to another e2eproxy instance that was asked for it "
                        "(a load balancer should send each access token to one instance)",
                        account.user_id, account.device_id)
            registry.metrics.count_lease_handed_over()
            await registry.let_go(account, release=True)
