"""Slow bodies (issue 24): a POST head announcing a body that never comes no longer holds a
connection past CHAT_BODY_DEADLINE_SECS, one address can't hold more than its budget of bodies
in flight per worker, and other users are served meanwhile. Against real gunicorn workers."""

import socket

import gevent
import pytest

from tests.helpers import GENEROUS_LIMITS, PASSWORD, Api, account, gunicorn_with_redis, unique

pytestmark = pytest.mark.gunicorn

SLOW = 200  # connections of the attacker (the full 25,000 is bench/slow_bodies.py's, not a test's)


def slow_post(host, port):
    """A connection that sends a POST's head announcing 60 KB and then nothing."""
    sock = socket.create_connection((host, port))
    sock.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 60000\r\n\r\nusername=a")
    return sock


def answer_of(sock):
    """The status line the server ends the connection with, once it closes it (b"" if none)."""
    sock.settimeout(60)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    return received.split(b"\r\n", 1)[0]


def test_slow_bodies_are_shed_and_other_users_are_served(tmp_path):
    env = {**GENEROUS_LIMITS, "CHAT_BODY_DEADLINE_SECS": "2", "CHAT_BODIES_PER_ADDRESS": "5"}
    with gunicorn_with_redis(tmp_path, workers=2, env=env) as (server, _):
        name = unique("u")
        account(server, name)
        user = Api(server.url, name, PASSWORD, source="127.0.0.2")  # another address than the attacker's
        api = Api(server.url)
        slow = [slow_post(api.host, api.port) for _ in range(SLOW)]
        # While they hang, another user's POST with a body goes through.
        response = user.post("/api/rooms/general/messages", {"text": "still here"})
        assert response.status == 201, response.body
        readers = [gevent.spawn(answer_of, sock) for sock in slow]
        gevent.joinall(readers, raise_error=True)
        statuses = [reader.value for reader in readers]
        timed_out = [s for s in statuses if s.startswith(b"HTTP/1.1 408")]
        refused = [s for s in statuses if s.startswith(b"HTTP/1.1 429")]
        # Every slow connection ended with an answer; at most the budget of each worker waited
        # for its body, the rest were refused at once.
        assert len(timed_out) + len(refused) == SLOW, set(statuses)
        assert 1 <= len(timed_out) <= 2 * 5 and refused
        # A body that arrives whole, slowly but within the deadline, is read as usual.
        sock = socket.create_connection((api.host, api.port))
        body = b'{"username": "nobody-here", "password": "not-the-password"}'
        sock.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        for byte in body:
            sock.sendall(bytes([byte]))
        assert answer_of(sock).startswith((b"HTTP/1.1 401", b"HTTP/1.1 403"))
