"""The cluster's edge over HTTPS with HTTP/2 (issue 13, item 5): real nginx, gunicorn and
Redis, spoken to with curl (built with nghttp2). Plain HTTP keeps working beside it."""

import json
import socket
import ssl
import subprocess

import gevent
import psutil
import pytest

from deploy.cluster import NGINX, Cluster, self_signed_certificate
from deploy.launch import free_port
from tests.helpers import PASSWORD, account, eventually, unique

pytestmark = pytest.mark.nginx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"}


@pytest.fixture
def edge(edge_cluster):
    """The session's cluster (conftest.py), shared with the browser tests of tests/test_tabs.py:
    2 instances x 1 worker. One test here restarts its nginx, on the same ports."""
    return edge_cluster


def curl(edge, *args):
    """curl over HTTP/2, checking the server against the cluster's own certificate (no -k)."""
    cert, _ = edge.certificate()
    return ["curl", "-sS", "--http2", "--cacert", str(cert), *args]


def run_curl(edge, *args):
    return subprocess.run(curl(edge, *args), capture_output=True, text=True, check=True).stdout


def test_https_speaks_http2_and_plain_http_still_speaks_http1(edge):
    for path in ("/healthz", "/", "/static/js/main.js"):
        out = run_curl(edge, "-o", "/dev/null", "-w", "%{http_version} %{http_code}", edge.https_url + path)
        assert out == "2 200", path
    old_client = run_curl(edge, "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          edge.https_url + "/healthz")
    assert old_client == "1.1 200"  # no h2 in its ALPN: HTTPS still answers
    plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                            edge.url + "/healthz"], capture_output=True, text=True, check=True).stdout
    assert plain == "1.1 200"


def test_the_pages_modules_are_revalidated_so_a_deploy_never_mixes_old_and_new(edge):
    """Regression (the page became ES modules): with `expires 1h` a browser could keep last hour's
    main.js beside this deploy's modules, and a page whose imports don't match can't start."""
    headers = run_curl(edge, "-D", "-", "-o", "/dev/null", edge.https_url + "/static/js/main.js").lower()
    assert "cache-control: no-cache" in headers
    style = run_curl(edge, "-D", "-", "-o", "/dev/null", edge.https_url + "/static/app.css").lower()
    assert "cache-control: max-age=3600" in style


def test_an_sse_stream_over_http2_receives_a_posted_message(edge):
    user = account(edge)  # registered over plain HTTP: one site, two listeners
    room = unique("r")
    auth = f"{user.auth_user}:{PASSWORD}"
    run_curl(edge, "-f", "-u", auth, "-d", f"name={room}", edge.https_url + "/api/rooms")
    stream = subprocess.Popen(curl(edge, "-N", "-i", "-u", auth, f"{edge.https_url}/api/rooms/{room}/events"),
                              stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        with gevent.Timeout(10):
            while "event: ready\n" not in lines:
                lines.append(stream.stdout.readline())
            sent = json.loads(run_curl(edge, "-f", "-u", auth, "-d", "text=over h2",
                                       f"{edge.https_url}/api/rooms/{room}/messages"))
            while not (lines[-1].startswith("data: ") and sent["id"] in lines[-1]):
                lines.append(stream.stdout.readline())
    finally:
        stream.terminate()
        stream.wait()
    assert lines[0].startswith("HTTP/2 200")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:lines.index("\n")]}
    assert headers["content-type"].startswith("text/event-stream")
    assert not HOP_BY_HOP & headers.keys(), headers
    assert lines[-3:-1] == [f"id: {sent['id']}\n", "event: message\n"]
    message = json.loads(lines[-1].removeprefix("data: "))
    assert message["text"] == "over h2" and message["user"] == user.auth_user


def test_eight_streams_and_a_post_share_one_http2_connection(edge, tmp_path):
    """Over HTTP/1.1 a browser holds at most 6 connections per host, so a 7th stream (or a
    POST behind 6 streams) waits; over HTTP/2 they are streams of one connection."""
    user = account(edge)
    auth = f"{user.auth_user}:{PASSWORD}"
    outputs = [tmp_path / f"stream{i}.txt" for i in range(8)]
    urls = []
    for i, output in enumerate(outputs):
        urls += ["-o", str(output), f"{edge.https_url}/api/rooms/general/events?tab={i}"]
    streams = subprocess.Popen(curl(edge, "-N", "--parallel", "--parallel-max", "20", "-u", auth, *urls),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def received(text):
        return all(path.exists() and text in path.read_text() for path in outputs)

    try:
        eventually(lambda: received("event: ready"), what="every stream opened")
        links = [c for c in psutil.Process(streams.pid).net_connections(kind="tcp")
                 if c.raddr and c.raddr.port == edge.https_port and c.status == psutil.CONN_ESTABLISHED]
        assert len(links) == 1, links
        sent = json.loads(run_curl(edge, "-f", "-u", auth, "-d", "text=to every tab",
                                   f"{edge.https_url}/api/rooms/general/messages"))
        eventually(lambda: received(f"id: {sent['id']}"), what="every stream received the message")
    finally:
        streams.terminate()
        streams.wait()


def test_a_signed_in_browser_session_writes_over_https(edge, tmp_path):
    """Cookie + CSRF token, with the Referer a browser sends: flask-wtf checks it against the
    host over HTTPS, so nginx must forward the host with its port."""
    jar = str(tmp_path / "jar")
    name = unique("u")
    registered = json.loads(run_curl(edge, "-f", "-c", jar, "-H", "Content-Type: application/json",
                                     "-d", json.dumps({"username": name, "password": PASSWORD}),
                                     edge.https_url + "/api/auth/register"))
    out = run_curl(edge, "-b", jar, "-w", "\n%{http_code}", "-H", f"X-CSRFToken: {registered['csrf_token']}",
                   "-H", f"Referer: {edge.https_url}/", "-H", "Content-Type: application/json",
                   "-d", json.dumps({"text": "from a tab"}), edge.https_url + "/api/rooms/general/messages")
    body, status = out.rsplit("\n", 1)
    assert status == "201", body
    assert json.loads(body)["user"] == name


def served_certificate(edge):
    """The certificate nginx presents (DER), checked against the cluster's own for 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(edge.certificate()[0]))
    with socket.create_connection(("127.0.0.1", edge.https_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True)


def test_the_cluster_certificate_is_made_once_and_reused_by_a_restarted_nginx(edge):
    cert, key = edge.certificate()
    assert cert.parent == edge.data_dir / "tls"
    assert key.stat().st_mode & 0o077 == 0
    before = (cert.read_bytes(), cert.stat().st_mtime_ns, key.read_bytes())
    assert served_certificate(edge) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    edge.stop_nginx()
    edge.start_nginx()
    assert (cert.read_bytes(), cert.stat().st_mtime_ns, key.read_bytes()) == before
    assert served_certificate(edge) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert run_curl(edge, "-o", "/dev/null", "-w", "%{http_version}", edge.https_url + "/healthz") == "2"


def test_self_signed_certificate_names_localhost_and_is_replaced_only_when_unusable(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
                           capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost" in names and "IP Address:127.0.0.1" in names
    first = (cert.read_bytes(), cert.stat().st_mtime_ns, key.read_bytes())
    assert self_signed_certificate(tmp_path) == (cert, key)
    assert (cert.read_bytes(), cert.stat().st_mtime_ns, key.read_bytes()) == first
    cert.write_text("not a certificate")
    self_signed_certificate(tmp_path)
    assert cert.read_bytes() != first[0] and key.read_bytes() != first[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_a_given_certificate_is_served_instead_of_a_self_signed_one(tmp_path):
    real_cert, real_key = self_signed_certificate(tmp_path / "real")
    cluster = Cluster(tmp_path / "cluster", port=free_port(), instance_ports=(free_port(),),
                      tls_cert=real_cert, tls_key=real_key)
    conf = cluster.render_nginx_conf()
    text = conf.read_text()
    assert f"ssl_certificate {real_cert};" in text and f"ssl_certificate_key {real_key};" in text
    assert not (tmp_path / "cluster" / "tls").exists()
    checked = subprocess.run([NGINX, "-t", "-p", str(conf.parent), "-c", str(conf)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr
