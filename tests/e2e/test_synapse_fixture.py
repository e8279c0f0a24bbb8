"""The Synapse fixture itself works: the other e2e tests trust it."""

from __future__ import annotations

import aiohttp
import pytest
import yaml

from tests.support.plain_client import PlainClient, RequestFailed, timeline_bodies
from tests.support.synapse import RATE_LIMIT_KEYS, SynapseError, SynapseServer

pytestmark = pytest.mark.e2e


async def test_versions_and_listener(synapse: SynapseServer) -> None:
    assert synapse.base_url.startswith("http://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as session,
        session.get(synapse.base_url + "/_matrix/client/versions") as response,
    ):
        assert response.status == 200
        versions = (await response.json())["versions"]
    assert "v1.11" in versions or "r0.6.1" in versions


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Synapse's own jsonschema use
def test_synapse_parses_every_rate_limit_as_raised(synapse: SynapseServer) -> None:
    """Synapse ignores unknown rc_* keys, so check what Synapse itself parsed, and that no
    limiter exists that RATE_LIMIT_KEYS forgets (a newer Synapse may add one)."""
    from synapse.config.homeserver import HomeServerConfig
    from synapse.config.ratelimiting import RatelimitSettings

    parsed = HomeServerConfig.load_config("e2e", ["-c", str(synapse.config_path)])
    limiters = {
        value.key: value
        for value in vars(parsed.ratelimiting).values()
        if isinstance(value, RatelimitSettings)
    }
    # Byte-rate limit on fetching remote media: no remote servers here.
    limiters.pop("rc_remote_media_downloads")
    assert set(limiters) == set(RATE_LIMIT_KEYS)
    for key, limit in limiters.items():
        assert limit.per_second >= 1_000_000 and limit.burst_count >= 1_000_000, key
    assert parsed.ratelimiting.rc_federation.reject_limit >= 1_000_000


def test_config_quirks(synapse: SynapseServer) -> None:
    config = yaml.safe_load(synapse.config_path.read_text())
    assert config["enable_registration"] is False
    assert config["bcrypt_rounds"] == 4
    assert config["presence"] == {"enabled": False}
    assert config["caches"]["sync_response_cache_duration"] == 0
    (listener,) = config["listeners"]  # no federation listener
    assert listener["bind_addresses"] == ["127.0.0.1"]
    assert listener["resources"] == [{"names": ["client"], "compress": False}]


async def test_register_login_room_send_sync(synapse: SynapseServer, localpart: str) -> None:
    alice = await synapse.register(f"{localpart}a", password="alice-pw")
    bob = synapse.register_sync(f"{localpart}b", password="bob-pw")
    assert alice.user_id == synapse.user_id(f"{localpart}a")
    user_id, token = bob
    assert (user_id, token) == (bob.user_id, bob.access_token)

    async with aiohttp.ClientSession() as session:
        a = PlainClient(session, synapse.base_url)
        b = PlainClient(session, synapse.base_url)
        await a.login(alice.user_id, "alice-pw")
        await b.login(bob.user_id, "bob-pw")
        assert (await a.whoami())["user_id"] == alice.user_id

        with pytest.raises(RequestFailed) as wrong:
            await PlainClient(session, synapse.base_url).login(alice.user_id, "nope")
        assert wrong.value.status == 403

        room_id = await a.create_room(name="fixture room", invite=[bob.user_id])
        await b.join_by_id_or_alias(room_id)
        await b.sync()
        await a.send_text(room_id, "hello from alice")
        await a.send_text(room_id, "second line")

        sync = await b.sync(timeout_ms=5000)
        bodies = timeline_bodies(sync, room_id)
        if bodies != ["hello from alice", "second line"]:
            bodies += timeline_bodies(await b.sync(timeout_ms=5000), room_id)
        assert bodies == ["hello from alice", "second line"]

    raw = await synapse.room_messages(bob.access_token, room_id, limit=10)
    raw_bodies = [e["content"]["body"] for e in raw if e["type"] == "m.room.message"]
    assert raw_bodies == ["second line", "hello from alice"]


async def test_admin_registration(synapse: SynapseServer, localpart: str) -> None:
    admin = await synapse.register(f"{localpart}admin", admin=True)
    answer = await synapse.client_request(
        "GET", f"/_synapse/admin/v2/users/{admin.user_id}", admin.access_token
    )
    assert answer["admin"] is True
    plain = await synapse.register(f"{localpart}plain")
    with pytest.raises(SynapseError, match="403"):
        await synapse.client_request(
            "GET", f"/_synapse/admin/v2/users/{admin.user_id}", plain.access_token
        )


async def test_registering_a_taken_name_fails_clearly(
    synapse: SynapseServer, localpart: str
) -> None:
    await synapse.register(localpart)
    with pytest.raises(SynapseError, match="M_USER_IN_USE"):
        await synapse.register(localpart)


class _BrokenSynapse(SynapseServer):
    def write_config(self):  # type: ignore[no-untyped-def]
        path = super().write_config()
        text = path.read_text().replace("name: sqlite3", "name: no-such-database-engine")
        path.write_text(text)
        return path


def test_startup_failure_reports_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = _BrokenSynapse(tmp_path)
    try:
        with pytest.raises(SynapseError, match="exited with status") as failure:
            broken.start(timeout=30)
    finally:
        broken.stop()
    assert "no-such-database-engine" in str(failure.value)
    assert broken.process is None
