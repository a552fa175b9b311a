"""Fixtures: a real redis-server per session, a fresh app per test, real gunicorn when workers
matter, a browser; and the suite's tiers. Shared helpers are in tests/helpers.py."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import pytest  # noqa: E402

pytest.register_assert_rewrite("tests.helpers")  # their asserts explain themselves too

import redis  # noqa: E402
from playwright.sync_api import BrowserType, expect  # noqa: E402

from chatapp import create_app  # noqa: E402
from chatapp.store.embedded_redis import EmbeddedRedis  # noqa: E402
from chatapp.web.context import services_of  # noqa: E402
from deploy.cluster import Cluster  # noqa: E402
from deploy.launch import Gunicorn  # noqa: E402
from deploy.redis_topology import ClusterSet, SentinelSet  # noqa: E402
from tests.helpers import (  # noqa: E402
    CHEAP_PASSWORD_HASH,
    DESKTOP,
    GENEROUS_LIMITS,
    PASSWORD,
    AuthActions,
    account,
    gunicorn_with_redis,
    unique,
)

# -- tiers -----------------------------------------------------------------------------
#
# Markers say what a test starts besides this process and its embedded redis-server. A test
# with none of them is in the quick tier (``./scripts/test --quick``; ``-m quick`` selects it
# too, in one process), and may not start any: launching gunicorn, nginx, a Redis topology or
# a browser fails a quick test, in every run.

STARTS = ("gunicorn", "nginx", "topology", "browser")
# The fixtures that start them (a test using one, directly or through another fixture, gets
# its markers). A module-local fixture that starts one marks its tests or module instead.
MARKERS_OF_FIXTURES = {
    "server": ("gunicorn",), "web": ("gunicorn",), "edge_cluster": ("gunicorn", "nginx"),
    "sentinel_set": ("topology",), "cluster_set": ("topology",), "playwright": ("browser",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in item.fixturenames:
            for marker in MARKERS_OF_FIXTURES.get(fixture, ()):
                item.add_marker(marker)
        if not any(item.get_closest_marker(marker) for marker in (*STARTS, "faults")):
            item.add_marker("quick")


def pytest_addoption(parser):
    parser.addoption("--share-modules", metavar="DIR", help="share the run out with other pytest processes "
                     "given the same DIR: each test module runs in the first of them to reach it "
                     "(./scripts/test --quick runs two: the tests mostly wait, and gevent rules out pytest-xdist)")


_modules_here = {}  # module -> whether this process runs it (--share-modules)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    folder = item.config.getoption("share_modules")
    if folder is None:
        return None
    module = item.nodeid.split("::")[0]
    if module not in _modules_here:
        try:  # the first process to create the module's file runs it
            os.close(os.open(os.path.join(folder, module.replace("/", "_")), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            _modules_here[module] = True
        except FileExistsError:
            _modules_here[module] = False
    return None if _modules_here[module] else True  # True: "done", by the other process


@pytest.fixture(autouse=True)
def _quick_tests_start_nothing(request, monkeypatch):
    """A quick test (one marked with none of ``STARTS``) that starts one of them fails, saying
    which marker it needs, in every run: a new test can't slip into the quick tier unmarked."""
    if request.node.get_closest_marker("quick") is None:
        return

    def refuse(what, marker):
        def launch(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} starts {what}: mark it @pytest.mark.{marker} "
                        "(quick tests start nothing but their embedded Redis; see tests/conftest.py)", pytrace=False)
        return launch

    monkeypatch.setattr(Gunicorn, "start", refuse("gunicorn", "gunicorn"))
    monkeypatch.setattr(Cluster, "start_nginx", refuse("nginx", "nginx"))
    monkeypatch.setattr(SentinelSet, "start", refuse("a Sentinel set", "topology"))
    monkeypatch.setattr(ClusterSet, "start", refuse("a Redis Cluster", "topology"))
    monkeypatch.setattr(BrowserType, "launch", refuse("a browser", "browser"))


# -- the app in this process ----------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def config():
    """Per-test overrides of app settings (tests may edit it before using ``app``)."""
    return {"CHAT_HEARTBEAT_SECS": 0.5, "CHAT_HUB_PING_SECS": 0.5, "CHAT_ROOM_LINGER_SECS": 0.2,
            **GENEROUS_LIMITS}


@pytest.fixture
def password_hash(request):
    """The settings of the app's password hash: the cheap one (tests/helpers.py), unless the test
    is marked ``real_password_hash`` (tests/test_abuse.py is). A test's ``config`` may still set it."""
    if request.node.get_closest_marker("real_password_hash"):
        return {}
    return CHEAP_PASSWORD_HASH


@pytest.fixture
def app(redis_server, redis_client, password_hash, config):
    app = create_app({"REDIS_URL": redis_server.url, "SECRET_KEY": "test", "TESTING": True, **password_hash,
                      **config})
    yield app
    services_of(app).hub.close("test over")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def alice(auth):
    """A client signed in as alice (session cookie)."""
    assert auth.register("alice").status_code == 201
    return auth._client


# -- real servers --------------------------------------------------------------

@pytest.fixture(scope="session")
def cluster_redis(tmp_path_factory):
    """The Redis behind the shared gunicorn (never flushed: tests use unique names)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("cluster-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(cluster_redis):
    """gunicorn with 2 gevent workers, shared by the tests of a session."""
    env = {"CHAT_HEARTBEAT_SECS": "1", "CHAT_READER_QUEUE": "100", **GENEROUS_LIMITS}
    with Gunicorn(cluster_redis.url, workers=2, env=env) as gunicorn:
        yield gunicorn


@pytest.fixture
def user(server):
    """A fresh account on the shared server; returns an Api signed in with Basic auth."""
    return account(server)


@pytest.fixture
def room(user):
    """A fresh room on the shared server."""
    name = unique("r")
    assert user.post("/api/rooms", {"name": name}).status == 201
    return name


# -- the browser (pytest-playwright, driving Debian's chromium) ------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args():
    return {"executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-extensions", "--disable-component-update", "--no-first-run"]}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A server for the browser tests of one module (one test SIGKILLs its workers)."""
    # A closed tab is noticed at the next heartbeat write: keep it short here.
    env = {**GENEROUS_LIMITS, "CHAT_RETRY_MS": "500", "CHAT_HEARTBEAT_SECS": "2", "CHAT_PRESENCE_LINGER_SECS": "1"}
    with gunicorn_with_redis(tmp_path_factory.mktemp("web"), env=env) as (server, _):
        yield server


@pytest.fixture
def base_url(web):
    return web.url


@pytest.fixture
def person(browser, web):
    """Open a signed-up user's page: ``person(name=None, query="", viewport=DESKTOP, init=None)``."""
    contexts = []

    def open_page(name=None, query="", viewport=DESKTOP, init_script=None):
        context = browser.new_context(viewport=viewport, base_url=web.url)
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.on("dialog", lambda dialog: pytest.fail(f"a dialog fired: {dialog.message}"))
        page.goto(f"/{query}")
        page.fill("#username", name or unique("p"))
        page.fill("#password", PASSWORD)
        page.click("#register-button")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15000)
        return page

    yield open_page
    for context in contexts:
        context.close()


# -- the cluster's edge: nginx with HTTPS + HTTP/2 in front of 2 gunicorn instances ----

@pytest.fixture(scope="session")
def edge_cluster(tmp_path_factory):
    """A deploy.cluster.Cluster of the session (2 instances x 1 worker, one Redis), started by the
    first test that asks: plain HTTP/1.1 at ``url``, HTTPS with HTTP/2 at ``https_url`` (a
    self-signed certificate: browser contexts take ``ignore_https_errors=True``). A test that
    restarts nginx brings it back on the same ports."""
    from deploy.launch import free_port

    env = {**GENEROUS_LIMITS, "CHAT_HEARTBEAT_SECS": "1", "CHAT_ACCESS_LOG": "0"}
    cluster = Cluster(tmp_path_factory.mktemp("edge"), port=free_port(), instance_ports=(free_port(), free_port()),
                      workers=1, env=env)
    cluster.start()
    yield cluster
    cluster.stop()


# -- Redis past one server: Sentinel and Cluster (Debian's redis-server 7, deploy/redis_topology.py) --

@pytest.fixture(scope="session")
def sentinel_set(tmp_path_factory):
    """A primary, 2 replicas and 3 sentinels, started by the first test that asks. A test that kills a
    node restarts it (``sentinel_set.restart(node)``); which node is primary changes from test to test."""
    with SentinelSet(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


@pytest.fixture(scope="session")
def cluster_set(tmp_path_factory):
    """A Redis Cluster of 3 primaries with a replica each, started by the first test that asks. A test
    that kills a node restarts it; slots may have moved (ask ``cluster_set.node_for_key``)."""
    with ClusterSet(tmp_path_factory.mktemp("redis-cluster")) as topology:
        yield topology
