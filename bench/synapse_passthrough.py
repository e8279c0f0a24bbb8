"""Workload 1 against a real Synapse (started by the runner: SQLite, 127.0.0.1, rate limits off):
added latency of small GETs, /sync long-poll wake-up, and requests/s with 50 clients, through
e2eproxy and through pantalaimon, side by side."""

from __future__ import annotations

import itertools

import aiohttp

from bench import passthrough, peers
from bench.common import V3, ProxyProcess, auth
from bench.env import Env
from tests.support.synapse import SynapseServer

_txn = itertools.count(1)


async def run(env: Env) -> None:
    synapse = SynapseServer(env.tmp / "synapse")
    synapse.start()
    proxy = ProxyProcess(synapse.base_url, env.tmp / "proxy-synapse")
    try:
        await proxy.start()
        await synapse.register("benchme", password="pw")
        other = await synapse.register("benchother")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
            env.http, env.proxy = http, proxy
            env.stub = None
            env.state["direct"] = synapse.base_url
            from bench.common import login

            me = await login(http, proxy.url, "benchme", "pw")
            token = me["access_token"]
            create = {"preset": "public_chat", "invite": [me["user_id"]]}
            async with http.post(f"{synapse.base_url}{V3}/createRoom",
                                 headers=auth(other.access_token), json=create) as response:
                room_id = (await response.json())["room_id"]
            async with http.post(f"{synapse.base_url}{V3}/rooms/{room_id}/join",
                                 headers=auth(token), json={}) as response:
                assert response.status == 200

            async def send(room: str, sender: str) -> None:
                url = f"{synapse.base_url}{V3}/rooms/{room}/send/m.room.message/w{next(_txn)}"
                async with http.put(url, headers=auth(other.access_token),
                                    json={"msgtype": "m.text", "body": "wake up"}) as response:
                    assert response.status == 200

            rounds = 100 if env.quick else 400
            async with peers.pantalaimon(env, synapse.base_url,
                                         env.tmp / "pantalaimon-synapse") as pan, \
                    peers.baseline(synapse.base_url, env.tmp / "proxy-synapse-baseline") as before:
                await passthrough.small_gets(env, "synapse", token, rounds,
                                             {"pantalaimon": pan, "before": before})
                await passthrough.sync_wakeup(env, "synapse", token, room_id, other.user_id,
                                              send, 6 if env.quick else 20)
                variants = {"direct": [synapse.base_url], "proxy": [proxy.url]}
                variants |= {name: [url] for name, url in (("pantalaimon", pan),
                                                           ("before", before)) if url is not None}
                await peers.throughput(env, "synapse", [token] * peers.CONCURRENCY, variants,
                                       1.0 if env.quick else 2.5, 2 if env.quick else 4)
    finally:
        await proxy.stop()
        synapse.stop()
