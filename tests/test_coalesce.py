"""Concurrent commands share round trips, and nothing else about them changes (chatapp.store.coalesce)."""

import gc
import time

import gevent
import pytest
import redis

from chatapp.store import topology
from chatapp.store.coalesce import CoalescingRedis
from chatapp.web.context import services_of

SLOW_SCRIPT = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])
return 1
"""


@pytest.fixture
def coalescing(redis_server):
    client = topology.client(topology.parse(redis_server.url), 4, 5, coalesce=True)
    assert isinstance(client, CoalescingRedis)
    yield client
    client.connection_pool.disconnect()


def server_reads(client):
    return client.info("stats")["total_reads_processed"]


def together(*calls):
    jobs = [gevent.spawn(call) for call in calls]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    return [job.value for job in jobs]


def test_concurrent_commands_leave_in_one_round_trip_and_each_gets_its_own_reply(coalescing):
    prefix = "coalesce:own"
    # Redis counts every client's reads: earlier tests' pooled connections that the garbage
    # collector closes would count here (their EOFs), so they go first; the PING's round trip
    # sees them counted.
    gc.collect()
    coalescing.ping()
    before = server_reads(coalescing)
    replies = together(*[lambda i=i: coalescing.incrby(f"{prefix}:{i}", i + 1) for i in range(50)])
    reads = server_reads(coalescing) - before
    assert replies == [i + 1 for i in range(50)]
    # One command at a time would be 50 reads (+1 for INFO); gathered, a handful.
    assert reads <= 10, (reads, coalescing.batches)
    assert coalescing.batches >= 1


def test_an_error_reply_reaches_only_the_command_that_caused_it(coalescing, redis_client):
    redis_client.rpush("coalesce:list", "x")

    def wrong():
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            coalescing.incr("coalesce:list")
        return "raised"

    replies = together(lambda: coalescing.incr("coalesce:a"), wrong, lambda: coalescing.incr("coalesce:b"))
    assert replies == [1, "raised", 1]
    assert coalescing.batches >= 1


def test_regression_a_connection_dropped_mid_batch_fails_only_the_unanswered(redis_server, redis_client):
    """The connection closes after the second reply of a batch (its own CLIENT KILL): the
    commands answered before keep their replies, the ones after fail as a lone command on a
    dropped connection does (they may have run: sending them again could run them twice),
    and the next command goes out on a new connection."""
    client = topology.client(topology.parse(redis_server.url), 1, 5, coalesce=True)

    def failing(key):
        with pytest.raises(redis.ConnectionError):
            client.incr(key)
        return "failed"

    own_id = client.client_id()
    replies = together(lambda: client.incr("coalesce:before"),
                       lambda: client.execute_command("CLIENT", "KILL", "ID", own_id, "SKIPME", "no"),
                       lambda: failing("coalesce:after1"), lambda: failing("coalesce:after2"))
    assert replies == [1, 1, "failed", "failed"]
    assert redis_client.get("coalesce:before") == b"1"
    assert client.incr("coalesce:next") == 1 and client.client_id() != own_id
    client.connection_pool.disconnect()


def test_regression_a_killed_sender_does_not_strand_the_commands_it_carried(coalescing):
    slow = coalescing.register_script(SLOW_SCRIPT)
    slow([], [1])  # loaded: the next calls are one EVALSHA each
    alone = gevent.spawn(slow, [], [300_000])  # on a connection of its own, busy for 0.3 s
    gevent.sleep(0.01)
    sender = gevent.spawn(slow, [], [300_000])  # opens a batch ...
    carried = [gevent.spawn(coalescing.incr, f"coalesce:carried:{i}") for i in range(3)]  # ... these join it
    gevent.sleep(0.05)  # the batch is on the wire, its sender waiting for the slow reply
    assert coalescing.batches == 1
    sender.kill()
    gevent.joinall(carried, timeout=5)
    assert all(job.ready() for job in carried)  # answered or failed, not waiting for ever
    assert alone.get(timeout=5) == 1
    assert coalescing.incr("coalesce:after-kill") == 1  # and the client goes on


def test_blocking_commands_dont_hold_up_the_others(coalescing, redis_client):
    waiting = gevent.spawn(coalescing.blpop, ["coalesce:queue"], 5)
    gevent.sleep(0.05)
    assert together(*[lambda i=i: coalescing.incr(f"coalesce:free:{i}") for i in range(5)]) == [1] * 5
    assert not waiting.ready()  # a BLPOP in the batch would have held the INCRs until it returned
    redis_client.rpush("coalesce:queue", "go")
    assert waiting.get(timeout=5) == (b"coalesce:queue", b"go")


def test_scripts_flushed_from_the_server_are_loaded_again_by_every_caller(coalescing, redis_client):
    script = coalescing.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script(["coalesce:script"], [1]) == 1
    redis_client.script_flush()
    replies = together(*[lambda: script(["coalesce:script"], [1]) for _ in range(10)])
    assert sorted(replies) == list(range(2, 12))


def test_regression_a_timeout_of_a_batch_opener_before_sending_leaves_no_one_waiting(coalescing):
    """The opener's own deadline passes while it lets the others join (its CPU work ran past
    it; gevent fires the timer after a slice of ready callbacks): its command is not sent,
    the joiner's is, and the joiner gets its reply."""
    def opener():
        try:
            with gevent.Timeout(0.002):
                started = time.perf_counter()
                while time.perf_counter() - started < 0.010:  # no yield: the deadline passes meanwhile
                    pass
                return coalescing.incr("coalesce:opener")
        except gevent.Timeout:
            return "timed out"

    jobs = [gevent.spawn(opener), gevent.spawn(coalescing.incr, "coalesce:joiner")]
    jobs += [gevent.spawn(lambda: None) for _ in range(60)]
    gevent.joinall(jobs[:2], timeout=5)
    assert jobs[1].ready() and jobs[1].value == 1
    if jobs[0].value == "timed out":
        assert coalescing.get("coalesce:opener") is None  # never sent, as with redis-py


def test_regression_a_timeout_of_a_batch_opener_while_reading_fails_no_other_command(coalescing):
    slow = coalescing.register_script(SLOW_SCRIPT)
    slow([], [1])

    def opener():
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.05):  # this request's own deadline, shorter than its script
                slow([], [200_000])
        return "timed out"

    replies = together(opener, *[lambda i=i: coalescing.incr(f"coalesce:joined:{i}") for i in range(3)])
    assert replies == ["timed out", 1, 1, 1]
    assert coalescing.batches == 1


def test_regression_a_bad_argument_fails_only_its_own_command(coalescing):
    def bad():
        with pytest.raises(redis.DataError):
            coalescing.set("coalesce:bad", None)
        return "refused"

    replies = together(lambda: coalescing.incr("coalesce:a"), bad, lambda: coalescing.incr("coalesce:c"))
    assert replies == [1, "refused", 1]


def test_regression_an_unreadable_reply_is_the_error_of_its_own_caller(redis_server, redis_client):
    client = topology.client(topology.parse(redis_server.url), 4, 5, coalesce=True, decode_responses=True)
    redis_client.set("coalesce:binary", b"\xff\xfe")

    def unreadable():
        with pytest.raises(UnicodeDecodeError):
            client.get("coalesce:binary")
        return "raised"

    def after():
        try:
            return client.incr("coalesce:after")
        except redis.ConnectionError:
            return "failed"  # may have run: the connection was dropped after the bad reply

    replies = together(lambda: client.incr("coalesce:before"), unreadable, after)
    assert replies[:2] == [1, "raised"] and replies[2] in (1, "failed")
    assert client.incr("coalesce:next") == 1  # the client goes on
    client.connection_pool.disconnect()


def test_the_app_coalesces_by_default(app):
    assert isinstance(services_of(app).redis, CoalescingRedis)


@pytest.mark.parametrize("config", [{"CHAT_REDIS_COALESCE": False}])
def test_coalescing_can_be_turned_off(app, client):
    """CHAT_REDIS_COALESCE=0: every command goes alone (for a worker saturated by long-polls,
    where waiting a pass costs POSTs more latency than the round trips it saves)."""
    redis_client = services_of(app).redis
    assert type(redis_client) is redis.Redis
    assert client.get("/healthz").status_code == 200 and redis_client.ping()
