"""Child process for the crash test: saves numbered batches forever, printing each committed one.

Run as ``python -m tests.store.crash_writer DATA_DIR``; the test kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from e2eproxy.crypto.changes import Changes
from e2eproxy.store.sqlite import SqliteStore
from tests.store.conftest import ALICE, inbound_record, megolm_pair

SESSIONS_PER_BATCH = 5


async def main(data_dir: Path) -> None:
    store = SqliteStore(data_dir, use_keyring=False)
    await store.open()
    number = 0
    while True:
        number += 1
        sessions = [inbound_record(megolm_pair()[1]) for _ in range(SESSIONS_PER_BATCH)]
        await store.save(
            ALICE,
            Changes(inbound_group_sessions=sessions, to_device_hashes=[f"h{number}"]),
            sync_tokens={"client": str(number)},
            txns={"last": {"n": number}},
        )
        print(number, flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
