"""One renewal loop per registry for every account's store lease (one transaction a round).

A lease that comes back lost (another instance took the account over, or drove it while this
one was paused) stops that account's work here at once: its engine state may be stale, and a
save would be refused anyway. A lease another instance asks for (a request for the account
reached it: the load balancer sent that token there) is handed over: the account's work stops,
then the lease is released, and that instance takes it within a round. Either way the account
leaves this registry; a later request here takes it back the same way.
"""

from __future__ import annotations

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


async def keep_leases(registry: AccountRegistry) -> None:
    while True:
        await registry.timer.sleep(RENEW_EVERY_MS / 1000 * random.uniform(1 - JITTER, 1))
        await renew_round(registry)


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
            await registry.let_go(account, release=False)
        elif lease.wanted:
            log.warning("handing %s %s over to another e2eproxy instance that was asked for it "
                        "(a load balancer should send each access token to one instance)",
                        account.user_id, account.device_id)
            await registry.let_go(account, release=True)
