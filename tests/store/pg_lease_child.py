"""A second e2eproxy process on the same PostgreSQL store, driven over JSON lines on stdin.

Usage: python -m tests.store.pg_lease_child URL DATA_DIR PASSPHRASE
Commands (one JSON object a line; one JSON answer a line each):
  {"op": "acquire", "accounts": [[user, device], ...], "at": UNIX_TIME}
      -> {"leases": [generation or null, ...]}  (null: StoreLocked), starting at "at"
  {"op": "save", "account": [user, device], "token": T}  -> {"ok": true} | {"locked": msg}
  {"op": "token", "account": [user, device]}  -> {"token": T or null}
  {"op": "exit"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from e2eproxy.crypto.changes import Changes
from e2eproxy.errors import StoreLocked
from e2eproxy.store.base import AccountKey
from e2eproxy.store.postgres import PostgresStore
from e2eproxy.types import DeviceId, UserId


def _account(pair: list[str]) -> AccountKey:
    return AccountKey(UserId(pair[0]), DeviceId(pair[1]))


async def _acquire(store: PostgresStore, accounts: list[AccountKey]) -> list[int | None]:
    leases: list[int | None] = []
    for account in accounts:
        try:
            leases.append((await store.acquire_lease(account)).generation)
        except StoreLocked:
            leases.append(None)
    return leases


async def _handle(store: PostgresStore, command: dict[str, Any]) -> dict[str, Any]:
    if command["op"] == "acquire":
        await asyncio.sleep(max(0.0, command["at"] - time.time()))
        return {"leases": await _acquire(store, [_account(a) for a in command["accounts"]])}
    account = _account(command["account"])
    if command["op"] == "save":
        try:
            await store.save(account, Changes(), sync_tokens={"client": command["token"]})
        except StoreLocked as exc:
            return {"locked": str(exc)}
        return {"ok": True}
    return {"token": await store.get_sync_token(account, "client")}


async def main(url: str, data_dir: str, passphrase: str) -> None:
    store = PostgresStore(url, Path(data_dir), passphrase=passphrase, scrypt_n=2**10)
    await store.open()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command = json.loads(line) if line.strip() else {"op": "exit"}
            if command["op"] == "exit":
                return
            print(json.dumps(await _handle(store, command)), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
