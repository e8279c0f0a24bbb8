"""Store benchmark: start-up time and memory with many stored inbound sessions; save latency.

    /tmp/venv/bin/python bench/bench_store.py [--sizes 10000,100000] [--saves 200]

Start-up (open + unlock + load the snapshot, as the proxy does at start) is measured in a fresh
child process per size, so its resident memory growth is not hidden by the parent's heap.
Inbound sessions are never part of the snapshot, so start-up should not depend on their number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vodozemac

from e2eproxy.crypto.changes import (
    AccountRecord,
    Changes,
    DeviceRecord,
    InboundGroupSessionRecord,
    OlmSessionRecord,
    ReplayRecord,
)
from e2eproxy.crypto.settings import LocalTrust
from e2eproxy.store.base import AccountKey
from e2eproxy.store.sqlite import SqliteStore
from e2eproxy.types import DeviceId, RoomId, SessionId, UserId

ACCOUNT = AccountKey(UserId("@bench:example.org"), DeviceId("BENCHDEV"))
FILL_BATCH = 2_000


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _inbound(session: vodozemac.InboundGroupSession, number: int) -> InboundGroupSessionRecord:
    # One real session pickled under many ids: same row size as distinct ones, much faster to fill.
    return InboundGroupSessionRecord(
        RoomId(f"!room{number % 200}:example.org"),
        SessionId(f"{number:043d}"),
        "c" * 43,
        "e" * 43,
        session,
        False,
        False,
        0,
    )


def _olm(peer: vodozemac.Account, account: vodozemac.Account) -> OlmSessionRecord:
    peer.generate_one_time_keys(1)
    otk = next(iter(peer.one_time_keys.values()))
    peer.mark_keys_as_published()
    session = account.create_outbound_session(peer.curve25519_key, otk)
    return OlmSessionRecord(peer.curve25519_key.to_base64(), session.session_id, session, 1, 1, 1)


async def fill(data_dir: Path, count: int) -> None:
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    account = vodozemac.Account()
    account.generate_one_time_keys(50)
    peers = [vodozemac.Account() for _ in range(50)]
    await store.save(
        ACCOUNT,
        Changes(
            account=AccountRecord(account, True, 0, 50),
            olm_sessions=[_olm(peer, account) for peer in peers],
        ),
    )
    session = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key)
    for start in range(0, count, FILL_BATCH):
        batch = [_inbound(session, n) for n in range(start, min(start + FILL_BATCH, count))]
        await store.save(ACCOUNT, Changes(inbound_group_sessions=batch))
    await store.close()


async def startup(data_dir: Path) -> dict[str, float]:
    """Run in the child: open the store and load the account's snapshot."""
    before = _rss_kib()
    began = time.perf_counter()
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    snapshot = await store.load_snapshot(ACCOUNT)
    loaded = await store.load_inbound_group_sessions(
        ACCOUNT, [(RoomId("!room7:example.org"), SessionId(f"{7:043d}"))]
    )
    elapsed = time.perf_counter() - began
    assert snapshot is not None and len(loaded[0]) == 1
    rss = _rss_kib() - before
    await store.close()
    return {"startup_ms": elapsed * 1000, "rss_growth_kib": rss}


def _typical_batch(number: int, session: vodozemac.InboundGroupSession) -> Changes:
    room = RoomId("!busy:example.org")
    sessions = [_inbound(session, 10_000_000 + number * 5 + i) for i in range(5)]
    replays = [
        ReplayRecord(room, SessionId(f"{number:043d}"), i, f"$e{number}.{i}", 1) for i in range(20)
    ]
    devices = [
        DeviceRecord(UserId(f"@u{i}:x"), DeviceId("D"), {"keys": {}}, LocalTrust.UNSET, False)
        for i in range(3)
    ]
    return Changes(
        inbound_group_sessions=sessions,
        replay_entries=replays,
        devices=devices,
        to_device_hashes=[f"{number:08d}{i:056d}" for i in range(10)],
    )


async def save_latency(data_dir: Path, saves: int) -> dict[str, float]:
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    session = vodozemac.InboundGroupSession(vodozemac.GroupSession().session_key)
    timings = []
    for number in range(saves):
        changes = _typical_batch(number, session)
        began = time.perf_counter()
        await store.save(ACCOUNT, changes, sync_tokens={"client": f"s{number}"})
        timings.append((time.perf_counter() - began) * 1000)
    await store.close()
    timings.sort()
    return {
        "save_median_ms": statistics.median(timings),
        "save_p95_ms": timings[int(len(timings) * 0.95) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the key-file warning is expected here
    if args.child:
        print(json.dumps(asyncio.run(startup(Path(args.child)))))
        return
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            asyncio.run(fill(Path(tmp), size))
            fill_s = time.perf_counter() - began
            db_mib = sum(p.stat().st_size for p in Path(tmp).glob("e2eproxy.db*")) / 2**20
            child = subprocess.run(
                [sys.executable, __file__, "--child", tmp],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(child.stdout)
            result.update(asyncio.run(save_latency(Path(tmp), args.saves)))
            rows.append((size, fill_s, db_mib, result))
    print(
        f"{'sessions':>9} {'fill s':>7} {'db MiB':>7} {'start ms':>9} {'RSS +KiB':>9} "
        f"{'save p50 ms':>12} {'save p95 ms':>12}"
    )
    for size, fill_s, db_mib, r in rows:
        print(
            f"{size:>9} {fill_s:>7.1f} {db_mib:>7.1f} {r['startup_ms']:>9.1f} "
            f"{r['rss_growth_kib']:>9.0f} {r['save_median_ms']:>12.2f} {r['save_p95_ms']:>12.2f}"
        )


if __name__ == "__main__":
    main()
