"""Which parts of an event name media (#16, item 2): the fields the spec gives each media event
type, nothing else."""

from __future__ import annotations

from e2eproxy.protocol.media_fields import (
    AVATAR_URL_FIELDS,
    fields_of,
    media_uris,
    with_plain_media,
)

FILE = {"v": "v2", "url": "mxc://s/enc", "key": {"k": "secret"}, "iv": "iv", "hashes": {}}
THUMB = {"v": "v2", "url": "mxc://s/thumb", "key": {"k": "secret"}, "iv": "iv", "hashes": {}}


def test_only_the_media_fields_of_media_event_types_count() -> None:
    image = {
        "msgtype": "m.image", "body": "mxc://s/in-body", "url": "mxc://s/enc", "file": FILE,
        "info": {"thumbnail_url": "mxc://s/thumb", "thumbnail_file": THUMB,
                 "mimetype": "mxc://s/not-media"},
        "extra": {"url": "mxc://s/custom"},
    }
    assert media_uris(image, fields_of("m.room.message")) == ["mxc://s/enc", "mxc://s/thumb"]
    assert media_uris({"file": FILE}, fields_of("m.sticker")) == ["mxc://s/enc"]
    assert media_uris({"url": "mxc://s/a"}, fields_of("m.room.avatar")) == ["mxc://s/a"]
    member = {"membership": "join", "avatar_url": "mxc://s/me", "displayname": "mxc://s/x"}
    assert media_uris(member, fields_of("m.room.member")) == ["mxc://s/me"]
    assert media_uris({"avatar_url": "mxc://s/me"}, AVATAR_URL_FIELDS) == ["mxc://s/me"]
    for event_type in ("m.room.topic", "m.room.name", "org.example.custom", "m.reaction"):
        assert media_uris({"url": "mxc://s/a", "topic": "mxc://s/b"}, fields_of(event_type)) == []


def test_a_plain_copy_replaces_the_reference_and_drops_the_key() -> None:
    content = {
        "msgtype": "m.image", "body": "mxc://s/enc", "url": "mxc://s/enc", "file": FILE,
        "info": {"thumbnail_file": THUMB, "w": 4},
    }
    replaced = {"mxc://s/enc": "mxc://s/plain", "mxc://s/thumb": "mxc://s/plain-thumb"}
    plain = with_plain_media(content, fields_of("m.room.message"), replaced)
    assert plain == {
        "msgtype": "m.image", "body": "mxc://s/enc", "url": "mxc://s/plain",
        "info": {"thumbnail_url": "mxc://s/plain-thumb", "w": 4},
    }
    assert content["file"] == FILE  # the caller's copy is left alone
