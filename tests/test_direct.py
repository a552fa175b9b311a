"""Streams written by the hub straight to their sockets (chatapp.web.takeover), under real gunicorn."""

import base64
import gc
import re
import socket
import weakref

import gevent
import pytest
import redis

from chatapp.delivery.event_stream import EventStream
from chatapp.web.context import services_of
from chatapp.web.takeover import _detach
from deploy.launch import Gunicorn
from tests.helpers import (
    GENEROUS_LIMITS,
    PASSWORD,
    account,
    assert_exactly_once_in_order,
    eventually,
    metric,
    operator_account,
    unique,
)


@pytest.fixture(scope="module")
def quiet(cluster_redis):
    """gunicorn whose heartbeat is a minute away, so nothing here is noticed by a ping;
    an admin, and a small reader queue so a stuck stream falls behind quickly."""
    admin = unique("boss")  # the Redis is shared with other modules' servers
    env = {**GENEROUS_LIMITS, "CHAT_ADMINS": admin, "CHAT_HEARTBEAT_SECS": "60", "CHAT_READER_QUEUE": "20"}
    with Gunicorn(cluster_redis.url, workers=2, env=env) as server:
        server.admin = admin
        yield server


class RawStream:
    """An SSE request on a bare socket with a tiny receive buffer: it reads only when told."""

    def __init__(self, server, api, room):
        host, port = server.url.split("//")[1].rstrip("/").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        token = base64.b64encode(f"{api.auth_user}:{PASSWORD}".encode()).decode()
        self.sock.sendall(f"GET /api/rooms/{room}/events HTTP/1.1\r\nHost: {host}\r\n"
                          f"Authorization: Basic {token}\r\n\r\n".encode())
        self.received = b""
        self.read_until(b"event: ready")

    def read_until(self, marker, timeout=10):
        self.sock.settimeout(timeout)
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        return marker in self.received

    def read_to_end(self, timeout=20):
        self.sock.settimeout(timeout)
        while chunk := self.sock.recv(65536):
            self.received += chunk

    def close(self):
        self.sock.close()


def test_live_stream_is_handed_to_the_hub_and_pinged_when_idle(server, user, room):
    """Under gunicorn the stream leaves the request loop ("Connection: close", chunked by us)
    and the hub's housekeeping keeps it alive (the shared server pings every second)."""
    raw = RawStream(server, user, room)
    head = raw.received.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in head and b"transfer-encoding: chunked" in head
    assert b"content-security-policy" in head  # Flask's after_request headers are kept
    assert raw.read_until(b": ping", timeout=5)
    sent = [user.post(f"/api/rooms/{room}/messages", {"text": f"m{i}"}).json["id"] for i in range(3)]
    assert raw.read_until(sent[-1].encode())
    got = re.findall(rb"^id: (\S+)$", raw.received, re.M)
    assert_exactly_once_in_order([i.decode() for i in got], sent)
    raw.close()


@pytest.mark.gunicorn
def test_client_hanging_up_is_noticed_at_once_not_at_the_next_heartbeat(quiet):
    """Regression: with no greenlet per stream nothing reads the socket; a read watcher must,
    or a closed tab would count as open (and present) until the next ping, a minute later."""
    api = account(quiet)
    baseline = metric(quiet, "chat_streams_open")
    streams = [api.stream("/api/rooms/general/events") for _ in range(4)]
    eventually(lambda: metric(quiet, "chat_streams_open") == baseline + 4, interval=0.1)
    for stream in streams:
        stream.close()
    eventually(lambda: metric(quiet, "chat_streams_open") == baseline, timeout=15, interval=0.1)


@pytest.mark.gunicorn
def test_kick_ends_a_stream_stuck_on_a_full_socket(quiet):
    """Regression: the drainer of a client that reads nothing waits on its socket; a kick
    must interrupt that wait instead of leaving the stream open for the write-stall timeout."""
    victim, boss = account(quiet), operator_account(quiet, quiet.admin)
    room = unique("r")
    assert victim.post("/api/rooms", {"name": room}).status == 201
    baseline = metric(quiet, "chat_streams_open")
    raw = RawStream(quiet, victim, room)
    text = "x" * 3000
    # 6 MB: more than the server's largest send buffer (4 MB here) plus the client's 4 KiB.
    for i in range(2000):
        assert victim.post(f"/api/rooms/{room}/messages", {"text": f"{i} {text}"}).status == 201
    assert metric(quiet, "chat_streams_open") == baseline + 1
    assert boss.post(f"/api/admin/users/{victim.auth_user}/kick").status == 200
    eventually(lambda: metric(quiet, "chat_streams_open") == baseline, timeout=10, interval=0.1)
    raw.read_to_end()  # what was in flight, then the end: the server closed the connection
    raw.close()


# -- the sink itself, on a socket pair (what gunicorn's socket becomes), with the real hub and Redis --


def direct_stream(app, room="general"):
    """An SSE stream taken over on one end of a socket pair; returns (reader, stream, client end)."""
    server_end, client_end = socket.socketpair()
    for end in (server_end, client_end):  # small buffers: a big message fills them
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = services_of(app).hub.reader(room, "alice")
    stream = EventStream(reader, "alice:test", None, 0, app.config, metrics=services_of(app).metrics)
    stream.take_over(_detach(server_end), b"HTTP/1.1 200 OK\r\n\r\n")
    return reader, stream, client_end


def publish(app, text, room="general"):
    return str(services_of(app).broker.publish(room, "bob", text)[0].id)


def read_available(end):
    end.setblocking(False)
    data = b""
    try:
        while chunk := end.recv(65536):
            data += chunk
    except BlockingIOError:
        pass
    end.setblocking(True)
    return data


def read_to_eof(end, timeout=5):
    """Everything until the server closes; fails if it doesn't within ``timeout``."""
    end.settimeout(timeout)
    data = b""
    while chunk := end.recv(65536):
        data += chunk
    return data


def message_ids(data):
    return [i.decode() for i in re.findall(rb"^id: (\S+)$", data, re.M)]


@pytest.mark.parametrize("config", [{**GENEROUS_LIMITS, "CHAT_READER_QUEUE": 3}])
def test_drainer_that_fails_unexpectedly_ends_the_stream_instead_of_skipping_ahead(app, monkeypatch):
    """Regression: a catch-up that raised anything but a connection error killed the drainer
    and left the stream open; the next publication went straight out, after a gap."""
    hub = services_of(app).hub
    monkeypatch.setattr(hub.feed, "recent_after", lambda reader: None)  # catch up from Redis, not the ring
    _, _, client = direct_stream(app)
    sent = [publish(app, "x" * 50_000)]  # more than the buffers hold: a drainer takes over
    sent += [publish(app, f"m{i}") for i in range(10)]  # queue overflows: the reader is behind
    gevent.sleep(0.1)

    def master_down(*args):
        raise redis.ResponseError("MASTERDOWN Link with MASTER is down")

    monkeypatch.setattr(hub.feed.broker, "catch_up", master_down)
    data = read_available(client)
    gevent.sleep(0.2)  # the drainer finishes the big chunk, then its catch-up fails
    publish(app, "after the failure")
    data += read_to_eof(client)
    got = message_ids(data)
    assert got == sent[: len(got)], "the stream skipped messages"
    assert b'"reason":"server_error"' in data


def test_kick_while_a_chunk_is_half_sent_does_not_write_the_farewell_into_it(app):
    """Regression: the farewell (and the last-chunk marker) landed inside the unfinished
    chunk; a client would take the half-received message's id as delivered."""
    reader, _, client = direct_stream(app)
    publish(app, "x" * 200_000)  # one chunk the socket can't take at once
    gevent.sleep(0.1)
    data = read_available(client)  # some room now, mid-chunk
    reader.close("kicked")
    data += read_to_eof(client)
    assert b"kicked" not in data
    assert len(data) < 200_000  # it really ended inside the message


def test_closed_stream_is_freed_by_reference_counting(app):
    """Regression: reader, sink and stream referred to each other, so a closed stream waited
    for a full garbage collection, which tune_gc makes rare."""
    reader, stream, client = direct_stream(app)
    stream_ref = weakref.ref(stream)
    del stream
    gc.disable()
    try:
        reader.close("kicked")
        read_to_eof(client)
        del reader
        assert stream_ref() is None
    finally:
        gc.enable()
