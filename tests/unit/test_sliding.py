"""Simplified sliding sync answers in the v2 shape the engine reads."""

from __future__ import annotations

from e2eproxy.protocol.sliding import (
    as_sync_body,
    extension_enabled,
    sliding_slots,
    strip_crypto_to_device,
)

ANSWER = {
    "pos": "5",
    "rooms": {
        "!a:test": {
            "timeline": [
                {"type": "m.room.encrypted", "event_id": "$1", "content": {"ciphertext": "x"}},
                {"type": "m.room.message", "event_id": "$2", "content": {"body": "plain"}},
            ],
            "required_state": [{"type": "m.room.encryption", "state_key": "", "content": {}}],
        },
        "!b:test": "junk",
    },
    "extensions": {
        "to_device": {"next_batch": "t1", "events": [
            {"type": "m.room.encrypted", "sender": "@x:test", "content": {}},
            {"type": "org.example.ping", "sender": "@x:test", "content": {}},
        ]},
        "e2ee": {
            "device_lists": {"changed": ["@x:test"], "left": []},
            "device_one_time_keys_count": {"signed_curve25519": 3},
            "device_unused_fallback_key_types": ["signed_curve25519"],
        },
    },
}


def test_answer_in_v2_shape_for_the_engine() -> None:
    v2 = as_sync_body(ANSWER)
    assert "next_batch" not in v2
    to_device = [e["type"] for e in v2["to_device"]["events"]]
    assert to_device == ["m.room.encrypted", "org.example.ping"]
    assert v2["device_lists"] == {"changed": ["@x:test"], "left": []}
    assert v2["device_one_time_keys_count"] == {"signed_curve25519": 3}
    assert v2["device_unused_fallback_key_types"] == ["signed_curve25519"]
    room = v2["rooms"]["join"]["!a:test"]
    assert [e["event_id"] for e in room["timeline"]["events"]] == ["$1", "$2"]
    assert [e["type"] for e in room["state"]["events"]] == ["m.room.encryption"]
    assert "!b:test" not in v2["rooms"]["join"]
    assert as_sync_body({"rooms": "junk", "extensions": 3}) == {
        "to_device": {"events": []}, "rooms": {"join": {}}
    }


def test_slots_extensions_and_stripping() -> None:
    import copy

    assert [(s.room_id, s.event["event_id"]) for s in sliding_slots(ANSWER)] == [("!a:test", "$1")]
    assert extension_enabled({"extensions": {"to_device": {"enabled": True}}}, "to_device")
    assert not extension_enabled({"extensions": {"to_device": {}}}, "to_device")
    assert not extension_enabled(None, "e2ee")
    answer = copy.deepcopy(ANSWER)
    strip_crypto_to_device(answer)
    assert [e["type"] for e in answer["extensions"]["to_device"]["events"]] == ["org.example.ping"]
