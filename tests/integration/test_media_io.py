"""Media through the proxy without blocking it: the spool's file I/O runs off the event loop,
and HEAD of an encrypted file is answered from the server's headers, its body never fetched."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from typing import Any

import aiohttp

from e2eproxy.proxy.app_keys import MEDIA, REGISTRY
from tests.integration.conftest import RunningProxy, StartE2EEProxy, proxied
from tests.support.plain_client import encrypted_room_of, get_media, stub_media, upload_media
from tests.support.stub_homeserver import StubHomeserver

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)

# File system events (open, unlink, listing) under a directory, with the thread of each: an
# audit hook sees them from any thread. Hooks cannot be removed: it records only when asked.
_watched: dict[str, list[tuple[str, str, int]]] = {}
_FILE_EVENTS = ("open", "os.remove", "os.listdir", "os.scandir")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watched or event not in _FILE_EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, int) or path is None:
        return
    try:
        text = os.fsdecode(path)
    except TypeError:
        return
    for directory, seen in _watched.items():
        if text.startswith(directory):
            seen.append((event, text, threading.get_ident()))


sys.addaudithook(_audit)


def _spool_dir(proxy: RunningProxy) -> str:
    app = proxy.server.app
    assert app is not None
    return str(app[MEDIA].spool.directory)


async def _send_image(sender: Any, reader: Any, room_id: str) -> str:
    """Upload PNG as `sender`, send it, and have `reader` see the event (its proxy then knows
    the file's key); returns the file's mxc."""
    url = await upload_media(sender, PNG, "image/png", filename="photo.png")
    held = await get_media(sender, url)  # a held upload, read back from the spool
    assert held.status == 200 and held.body == PNG
    content = {"msgtype": "m.image", "body": "photo.png", "url": url,
               "info": {"mimetype": "image/png", "size": len(PNG)}}
    event_id = await sender.send(room_id, content)
    await reader.wait_for_event(room_id, event_id)
    return url


async def test_spool_file_io_runs_off_the_event_loop(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """A slow disk must not stall every request of every account: spool files are opened,
    read, written and deleted in the executor, never on the event loop's thread."""
    proxy, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    seen: list[tuple[str, str, int]] = []
    _watched[_spool_dir(proxy)] = seen
    try:
        url = await _send_image(alice, bob, room_id)  # spooled, read back, published, dropped
        downloaded = await get_media(bob, url)  # fetched into the spool, decrypted from it
        assert downloaded.status == 200 and downloaded.body == PNG
        await upload_media(alice, PNG, "image/png")  # held, then forgotten unused
        app = proxy.server.app
        assert app is not None
        for upload in (await app[MEDIA].of(_account(proxy, alice)).pending()).values():
            upload.expires_ms = 0
        await app[MEDIA].expire_all(list(app[REGISTRY].accounts.values()))
    finally:
        del _watched[_spool_dir(proxy)]
    kinds = {event for event, _, _ in seen}
    assert {"open", "os.remove", "os.listdir"} <= kinds, seen
    loop_thread = threading.get_ident()
    on_loop = [(event, os.path.basename(path)) for event, path, thread in seen
               if thread == loop_thread]
    assert on_loop == [], f"spool file I/O on the event loop: {on_loop}"
    assert os.listdir(_spool_dir(proxy)) == []


def _account(proxy: RunningProxy, client: Any) -> Any:
    app = proxy.server.app
    assert app is not None
    [account] = [a for a in app[REGISTRY].accounts.values() if a.device_id == client.device_id]
    return account


async def test_head_of_an_encrypted_file_does_not_download_it(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    proxy, (alice, bob) = await proxied(stub, session, start_e2ee_proxy, "alice", "bob")
    room_id = await encrypted_room_of(alice, bob)
    url = await _send_image(alice, bob, room_id)
    full = await get_media(bob, url)  # bob's proxy knows the file's key from the event
    assert full.status == 200 and full.body == PNG

    gate = asyncio.Event()  # the server sends the first byte, then the rest only once set
    stub_media(stub, url).body_gate = gate
    server_name, media_id = url.removeprefix("mxc://").split("/")
    try:
        for path in (f"/_matrix/client/v1/media/download/{server_name}/{media_id}",
                     f"/_matrix/media/v3/download/{server_name}/{media_id}/named.png"):
            request = session.head(proxy.url + path,
                                   headers={"Authorization": f"Bearer {bob.access_token}"})
            async with asyncio.timeout(10):  # without the fix: waits for the whole body
                async with request as answer:
                    body = await answer.read()
            assert answer.status == 200, answer
            assert body == b""
            assert answer.headers["Content-Length"] == str(len(PNG)), answer.headers
            assert answer.headers["Content-Type"].split(";")[0] == "image/png", answer.headers
            assert answer.headers["Content-Disposition"].startswith("inline"), answer.headers
        assert os.listdir(_spool_dir(proxy)) == []
    finally:
        gate.set()


async def test_a_held_upload_is_ciphertext_in_a_directory_only_its_owner_enters(
    stub: StubHomeserver, session: aiohttp.ClientSession, start_e2ee_proxy: StartE2EEProxy
) -> None:
    """Another user of the host cannot enter the spool; whoever reads the disk anyway (a
    backup, a stolen laptop) finds ciphertext whose key is only in the encrypted store."""
    proxy, (alice,) = await proxied(stub, session, start_e2ee_proxy, "alice")
    await upload_media(alice, PNG, "image/png", filename="private.png")
    spool = _spool_dir(proxy)
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o700
    [name] = os.listdir(spool)
    path = os.path.join(spool, name)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, "rb") as handle:
        stored = handle.read()
    assert len(stored) == len(PNG)
    assert PNG[:8] not in stored and PNG[1000:1032] not in stored
