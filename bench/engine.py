"""The engine alone (bench_engine.py): decrypt_room_event versus raw vodozemac on the same 1,000
ciphertexts (interleaved), and share_room_key to 500 devices; plus the store's save latency of a
typical sync batch (bench_store.py)."""

from __future__ import annotations

import asyncio
import statistics

from bench import bench_engine, bench_store
from bench.common import Row, median, p90
from bench.env import Env


async def run(env: Env) -> None:
    rounds = 5 if env.quick else 15
    engine, raw = bench_engine.bench_decrypt(rounds)
    n = bench_engine.N_EVENTS
    ratio = median(engine) / median(raw)
    env.report.add(Row("engine", f"decrypt_room_event, per event (x{n})",
                       median(engine) * 1000 / n, p90(engine) * 1000 / n, "ms",
                       f"raw {median(raw) * 1000 / n:.3f} ms", ratio, "<= 1.3x raw",
                       ratio <= 1.3, samples=rounds))
    devices, claims = bench_engine._devices()
    times = [bench_engine.bench_share(devices, claims)[0] for _ in range(3)]
    env.report.add(Row("engine", f"share_room_key to {bench_engine.N_DEVICES} devices",
                       statistics.median(times) * 1000, max(times) * 1000, "ms",
                       note="Olm session creation included; no I/O", samples=3))
    data_dir = env.tmp / "engine-store"
    await bench_store.fill(data_dir, 1000)
    saves = await bench_store.save_latency(data_dir, 50 if env.quick else 200)
    env.report.add(Row("engine", "store save of a typical sync batch (SQLite, fsync)",
                       saves["save_median_ms"], saves["save_p95_ms"], "ms",
                       note="p90 column: p95"))
    await asyncio.sleep(0)
