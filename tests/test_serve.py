"""The README's first command, run as a newcomer would: from a clean copy of the repo."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.helpers import PASSWORD, ROOT, Api

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def checkout(tmp_path):
    """The repository's files (tracked and new, not ignored) in a fresh folder, no var/."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


_running = []


@pytest.fixture(autouse=True)
def stop_what_is_left():
    """A failing test must not leave gunicorn and its Redis running."""
    yield
    while _running:
        serve = _running.pop()
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()
        for leftover in serve.checkout.glob("var/redis/redis.pid"):
            try:
                os.kill(int(leftover.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


class Serve:
    def __init__(self, checkout):
        _running.append(self)
        self.checkout = checkout
        env = {**os.environ, "PORT": "0", "CHAT_VENV": sys.prefix}
        env.pop("REDIS_URL", None)
        env.pop("SECRET_KEY", None)
        self.proc = subprocess.Popen(["./scripts/serve"], cwd=checkout, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = []
        deadline = time.monotonic() + 120  # the first run may install requirements
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            assert line, "serve exited:\n" + "".join(self.output)
            self.output.append(line)
            match = re.search(r"Chat is running at (http://\S+?)/? ", line)
            if match:
                self.url = match[1]
                return
        raise AssertionError("no URL printed:\n" + "".join(self.output))

    def stop(self, sig=signal.SIGTERM):
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.stop_secs = time.monotonic() - started
        if sig != signal.SIGKILL:  # after a SIGKILL, orphaned workers may hold the pipe
            self.output.append(self.proc.stdout.read())
        return code


def redis_pid(checkout):
    return int((checkout / "var/redis/redis.pid").read_text())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_serve_runs_and_stops_cleanly_and_keeps_messages(checkout):
    first = Serve(checkout)
    api = Api(first.url)
    assert api.get("/readyz").status == 200
    assert api.post("/api/auth/register", {"username": "newcomer", "password": PASSWORD}).status == 201
    user = Api(first.url, "newcomer", PASSWORD)
    sent = user.post("/api/rooms/general/messages", {"text": "kept"}).json
    store = redis.Redis(unix_socket_path=str(checkout / "var/redis/redis.sock"))
    memory = store.config_get("maxmemory*")
    assert (memory["maxmemory"], memory["maxmemory-policy"]) == (str(2**30), "noeviction")  # the defaults
    store.close()
    pid = redis_pid(checkout)
    assert first.stop() == 0
    assert first.stop_secs < 10
    assert not alive(pid), "Redis outlived gunicorn"
    assert (checkout / "var/redis/appendonly.aof").exists()

    second = Serve(checkout)
    history = Api(second.url, "newcomer", PASSWORD).get("/api/rooms/general/messages").json
    assert history["messages"] == [sent]
    pid = redis_pid(checkout)
    second.stop(signal.SIGINT)  # Ctrl-C
    assert not alive(pid)


def test_stale_redis_from_a_crashed_run_is_reused_then_stopped(checkout):
    crashed = Serve(checkout)
    orphan = redis_pid(checkout)
    crashed.stop(signal.SIGKILL)  # the master dies without cleaning up
    assert alive(orphan)
    again = Serve(checkout)
    assert Api(again.url).get("/readyz").status == 200
    assert again.stop() == 0
    assert any("reusing Redis" in line for line in again.output)
    assert not alive(orphan), "the stale Redis was orphaned a second time"
