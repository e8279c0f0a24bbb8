"""Workload 6, media: a large file uploaded and downloaded through the proxy into an encrypted
room (held upload, encrypted at send time, hash-checked and decrypted on download) versus the
same size straight to the homeserver; throughput and the proxy's peak memory."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

from bench.common import V3, Row, auth, median
from bench.devices import encryption_state
from bench.env import Env

CHUNK = 1024 * 1024
_txn = itertools.count(1)


async def _body(megabytes: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(megabytes):
        yield block


async def _upload(env: Env, base: str, token: str, megabytes: int) -> tuple[float, str]:
    assert env.http is not None
    began = time.perf_counter()
    async with env.http.post(
        f"{base}/_matrix/media/v3/upload?filename=big.bin", data=_body(megabytes),
        headers={**auth(token), "Content-Type": "application/octet-stream",
                 "Content-Length": str(megabytes * CHUNK)},
    ) as response:
        assert response.status == 200, await response.text()
        mxc = str((await response.json())["content_uri"])
    return time.perf_counter() - began, mxc


async def _send_file(env: Env, token: str, room_id: str, mxc: str, megabytes: int) -> float:
    assert env.http is not None
    began = time.perf_counter()
    content = {"msgtype": "m.file", "body": "big.bin", "url": mxc,
               "info": {"mimetype": "application/octet-stream", "size": megabytes * CHUNK}}
    async with env.http.put(f"{env.proxied}{V3}/rooms/{room_id}/send/m.room.message/"
                            f"media{next(_txn)}", json=content, headers=auth(token)) as response:
        assert response.status == 200, await response.text()
    return time.perf_counter() - began


async def _download(env: Env, base: str, token: str, mxc: str, megabytes: int) -> float:
    assert env.http is not None
    began = time.perf_counter()
    size = 0
    async with env.http.get(f"{base}/_matrix/client/v1/media/download/{mxc[6:]}",
                            headers=auth(token)) as response:
        assert response.status == 200, await response.text()
        async for piece in response.content.iter_chunked(CHUNK):
            size += len(piece)
    assert size == megabytes * CHUNK, size
    return time.perf_counter() - began


def _forget(env: Env, mxc: str) -> None:
    """The stub keeps media in memory: drop each round's files so it does not grow by GBs."""
    assert env.stub is not None
    server, media_id = mxc[6:].split("/", 1)
    env.stub.media.items.pop((server, media_id), None)


async def run(env: Env) -> None:
    assert env.stub is not None and env.proxy is not None
    me = await env.user_through_proxy("media")
    token, my_id = me["access_token"], me["user_id"]
    room_id = env.stub.create_room(my_id, initial_state=[encryption_state()])
    megabytes = 20 if env.quick else 100
    rounds = 2 if env.quick else 4
    before = env.proxy.memory_kib()
    times: dict[str, list[float]] = {k: [] for k in ("up", "send", "down", "up_d", "down_d")}
    for number in range(rounds):
        # Alternate which side goes first, so neither always meets a warmer machine.
        for side in (("proxy", "direct") if number % 2 == 0 else ("direct", "proxy")):
            if side == "proxy":
                upload, mxc = await _upload(env, env.proxied, token, megabytes)
                times["up"].append(upload)
                times["send"].append(await _send_file(env, token, room_id, mxc, megabytes))
                times["down"].append(await _download(env, env.proxied, token, mxc, megabytes))
            else:
                upload, mxc = await _upload(env, env.direct, token, megabytes)
                times["up_d"].append(upload)
                times["down_d"].append(await _download(env, env.direct, token, mxc, megabytes))
            _forget(env, mxc)
    after = env.proxy.memory_kib()

    def rate(samples: list[float]) -> float:
        return megabytes / median(samples)

    up = [u + s for u, s in zip(times["up"], times["send"], strict=True)]
    report = env.report
    report.add(Row("media", f"{megabytes} MB upload + send, encrypted room", rate(up), None,
                   "MB/s", f"direct upload {rate(times['up_d']):.0f} MB/s",
                   rate(up) / rate(times["up_d"]), samples=len(up)))
    report.add(Row("media", f"{megabytes} MB download, decrypted by the proxy",
                   rate(times["down"]), None, "MB/s",
                   f"direct {rate(times['down_d']):.0f} MB/s",
                   rate(times["down"]) / rate(times["down_d"]), samples=len(times["down"])))
    growth = (after.get("VmHWM", 0) - before.get("VmHWM", 0)) / 1024
    report.add(Row("media", "proxy peak memory growth over the media rounds", growth, None, "MB",
                   target="a few MB (streaming)", met=growth < 16))
    env.record_memory("media")
