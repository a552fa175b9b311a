import json

import pytest

from chatapp.core.ids import ZERO, StreamId
from chatapp.ops.errors import BadRequest
from chatapp.store import keys
from chatapp.web.context import services_of


def broker_of(app):
    return services_of(app).broker


def test_stream_ids_compare_as_integer_pairs_not_strings():
    assert StreamId.parse("10-0") > StreamId.parse("9-5")
    assert sorted(["10-0", "9-5"]) == ["10-0", "9-5"]  # what string order would have said
    assert StreamId.parse("5-10") > StreamId.parse("5-9")
    assert StreamId.parse("0") == ZERO


@pytest.mark.parametrize("bad", ["", "abc", "1-", "-1", "1-2-3", "1.5-0", " 1-0", "1-0 ",
                                  "99999999999999999999999-0", "18446744073709551616-0", "$", "+"])
def test_malformed_cursors_are_rejected(bad):
    with pytest.raises(BadRequest):
        StreamId.parse(bad)


def test_publish_is_in_the_stream_and_on_the_channel_in_one_script(app, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.room_channel("general"))
    pubsub.get_message(timeout=1)
    publication, created = broker_of(app).publish("general", "alice", "hi")
    assert created
    live = pubsub.get_message(timeout=2)
    assert live["data"] == publication.json
    (entry_id, _), = redis_client.xrange(keys.room_log("general"))
    assert StreamId.from_bytes(entry_id) == publication.id
    message = json.loads(publication.json)
    assert message == {"id": str(publication.id), "ts": publication.id.ms, "room": "general",
                       "user": "alice", "text": "hi"}


def test_history_entry_encodes_exactly_like_the_live_message(app):
    broker = broker_of(app)
    publication, _ = broker.publish("general", "alice", 'quote " and </script> and ünïcode')
    assert broker.read_after("general", ZERO, 10)[0].json == publication.json


def test_publish_order_equals_stream_order(app, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.room_channel("general"))
    pubsub.get_message(timeout=1)
    for i in range(50):
        broker_of(app).publish("general", "alice", str(i))
    live = [StreamId.from_bytes(json.loads(pubsub.get_message(timeout=2)["data"])["id"].encode())
            for _ in range(50)]
    stored = [StreamId.from_bytes(i) for i, _ in redis_client.xrange(keys.room_log("general"))]
    assert live == stored == sorted(stored)


def test_idempotency_key_returns_first_message_and_adds_nothing(app, redis_client):
    broker = broker_of(app)
    first, created = broker.publish("general", "alice", "once", "key-1")
    again, created_again = broker.publish("general", "alice", "once", "key-1")
    assert created and not created_again
    assert again.json == first.json
    assert redis_client.xlen(keys.room_log("general")) == 1


def test_idempotency_keys_are_per_user(app, redis_client):
    broker = broker_of(app)
    broker.publish("general", "alice", "a", "same")
    _, created = broker.publish("general", "bob", "b", "same")
    assert created
    assert redis_client.xlen(keys.room_log("general")) == 2


def test_catch_up_reports_reset_only_after_trimming(app):
    broker = broker_of(app)
    broker.maxlen = 10
    first, _ = broker.publish("general", "alice", "0")
    page, reset = broker.catch_up("general", ZERO, 100)
    assert reset is None and [p.id for p in page] == [first.id]  # nothing trimmed yet
    for i in range(300):
        broker.publish("general", "alice", str(i))
    page, reset = broker.catch_up("general", first.id, 100)
    assert page == [] and reset.oldest > first.id
    assert reset.latest == broker.tail("general")
    page, reset = broker.catch_up("general", reset.oldest, 5)
    assert reset is None and len(page) == 5


def test_catch_up_resets_a_cursor_from_the_future(app):
    broker = broker_of(app)
    publication, _ = broker.publish("general", "alice", "x")
    page, reset = broker.catch_up("general", StreamId(publication.id.ms + 10_000, 0), 10)
    assert page == [] and reset.latest == publication.id
