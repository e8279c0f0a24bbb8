"""Media: plain upload, asynchronous create + upload, downloads, auth and size rules."""

from __future__ import annotations

import asyncio

from tests.support.stub_homeserver import StubHomeserver

from .conftest import Api, Login

MEDIA = "/_matrix/media/v3"
AUTH_MEDIA = "/_matrix/client/v1/media"


def _path(mxc: str) -> str:
    return mxc.removeprefix("mxc://")


async def test_upload_and_download_preserve_headers(login: Login, anon: Api) -> None:
    alice = await login("alice")
    result = await alice.ok("POST", f"{MEDIA}/upload", data=b"\x89PNG...",
                            params={"filename": "cat.png"},
                            headers={"Content-Type": "image/png"})
    url = anon.base_url + f"{MEDIA}/download/{_path(result['content_uri'])}"
    async with anon.http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b"\x89PNG..."
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"] == 'inline; filename="cat.png"'
    async with anon.http.get(url + "/other%20name.png") as resp:
        assert resp.headers["Content-Disposition"] == 'inline; filename="other name.png"'


async def test_authenticated_download_requires_token(login: Login, anon: Api) -> None:
    alice = await login("alice")
    result = await alice.ok("POST", f"{MEDIA}/upload", data=b"doc",
                            headers={"Content-Type": "application/pdf"})
    path = f"{AUTH_MEDIA}/download/{_path(result['content_uri'])}"
    status, body = await anon.call("GET", path)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    assert await alice.ok("GET", path) == b"doc"
    assert await alice.ok("GET", f"{AUTH_MEDIA}/thumbnail/{_path(result['content_uri'])}",
                          params={"width": "32", "height": "32"}) == b"doc"


async def test_async_create_then_upload_then_download(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice")
    bob = await login("bob")
    created = await alice.ok("POST", "/_matrix/media/v1/create")
    assert created["content_uri"].startswith("mxc://stub.test/")
    assert created["unused_expires_at"] > 0
    item = _path(created["content_uri"])
    pending = asyncio.create_task(bob.call("GET", f"{AUTH_MEDIA}/download/{item}"))
    await asyncio.sleep(0.05)
    assert not pending.done()
    status, body = await bob.call("PUT", f"{MEDIA}/upload/{item}", data=b"x")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    await alice.ok("PUT", f"{MEDIA}/upload/{item}", data=b"ciphertext",
                   headers={"Content-Type": "application/octet-stream"})
    assert await asyncio.wait_for(pending, 2) == (200, b"ciphertext")
    status, body = await alice.call("PUT", f"{MEDIA}/upload/{item}", data=b"again")
    assert (status, body["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    status, body = await alice.call("PUT", f"{MEDIA}/upload/stub.test/unknown", data=b"x")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_not_yet_uploaded_times_out(login: Login) -> None:
    alice = await login("alice")
    created = await alice.ok("POST", "/_matrix/media/v1/create")
    status, body = await alice.call("GET", f"{AUTH_MEDIA}/download/{_path(created['content_uri'])}",
                                    params={"timeout_ms": "50"})
    assert (status, body["errcode"]) == (504, "M_NOT_YET_UPLOADED")


async def test_large_upload_and_size_limit(login: Login, stub: StubHomeserver) -> None:
    alice = await login("alice")
    big = bytes(range(256)) * (50 * 1024 * 1024 // 256)

    async def chunks() -> object:
        for start in range(0, len(big), 1 << 20):
            yield big[start:start + (1 << 20)]

    url = alice.base_url + f"{MEDIA}/upload"
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with alice.http.post(url, data=chunks(), headers=headers) as resp:
        assert resp.status == 200
        mxc = (await resp.json())["content_uri"]
    assert stub.media.get(*_path(mxc).split("/")).content == big
    stub.media.max_upload_size = 10
    status, body = await alice.call("POST", f"{MEDIA}/upload", data=b"x" * 11)
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
    config = await alice.ok("GET", f"{AUTH_MEDIA}/config")
    assert config == {"m.upload.size": 10}


async def test_unknown_media_is_404(anon: Api) -> None:
    status, body = await anon.call("GET", f"{MEDIA}/download/stub.test/nope")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
