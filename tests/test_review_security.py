"""The review server against other web pages: cross-site posts, DNS rebinding, missing tokens, framing,
idle connections. Every case talks to a real server on 127.0.0.1 over a raw socket."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from maskkit.review.queue import build_queue
from test_audit import _get, _post, _raw, catalog  # noqa: F401  (the raw-socket helpers and catalog fixture)


@pytest.fixture()
def server(catalog):
    from maskkit.review.server import AuditApp, make_server

    queue = build_queue(catalog, count=3)
    review = AuditApp(catalog, queue, "ann")
    srv = make_server(review, port=0, idle_timeout=1.5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield review, srv.server_address[1], queue.profile_ids[0]
    srv.shutdown()
    srv.server_close()


def _reviews(catalog) -> int:
    return catalog.db().execute("select count(*) from review").fetchone()[0]


def _flip(pid: int) -> bytes:
    return json.dumps({"profile_id": pid, "action": "gender", "value": "flip"}).encode()


@pytest.mark.parametrize("case, kwargs, status, words", [
    # the example: a cross-site form post, text/plain, foreign Origin
    ("cross-site form", dict(content_type="text/plain", extra="Origin: http://evil.example\r\n"), 403, "cross-origin"),
    ("text/plain with the token", dict(content_type="text/plain"), 415, "application/json"),
    ("urlencoded form", dict(content_type="application/x-www-form-urlencoded"), 415, "application/json"),
    ("multipart form", dict(content_type="multipart/form-data; boundary=x"), 415, "application/json"),
    ("foreign Origin, JSON, token", dict(extra="Origin: http://evil.example\r\n"), 403, "cross-origin"),
    ("Origin null (sandboxed frame)", dict(extra="Origin: null\r\n"), 403, "cross-origin"),
    ("Origin on another port", dict(extra="Origin: http://127.0.0.1:1\r\n"), 403, "cross-origin"),
    ("cross-site fetch metadata", dict(extra="Sec-Fetch-Site: cross-site\r\n"), 403, "cross-site"),
    ("same-site fetch metadata", dict(extra="Sec-Fetch-Site: same-site\r\n"), 403, "cross-site"),
    ("DNS rebinding Host", dict(host="evil.example"), 421, "Host"),
    ("rebinding Host with our port", dict(host="evil.example:PORT"), 421, "Host"),
    ("Host with another port", dict(host="127.0.0.1:1"), 421, "Host"),
    ("no token", dict(token=""), 403, "token"),
    ("wrong token", dict(token="guess"), 403, "token"),
])
def test_foreign_posts_are_refused_and_change_nothing(catalog, server, case, kwargs, status, words):
    review, port, pid = server
    kwargs = dict(kwargs)
    kwargs.setdefault("token", review.token)
    if "host" in kwargs:
        kwargs["host"] = kwargs["host"].replace("PORT", str(port))
    before = catalog.db().execute("select gender from profile where id = ?", (pid,)).fetchone()
    code, answer = _post(port, _flip(pid), **kwargs)
    assert code == status and words in answer["error"], (case, code, answer)
    assert catalog.db().execute("select gender from profile where id = ?", (pid,)).fetchone() == before
    assert _reviews(catalog) == 0


def test_the_page_itself_still_works_same_origin(catalog, server):
    review, port, pid = server
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        code, answer = _post(port, _flip(pid), token=review.token, host=host,
                             extra=f"Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n")
        assert code == 200 and answer["events"], answer
    assert _reviews(catalog) == 2


@pytest.mark.parametrize("path", ["/api/state", "/api/progress", "/api/person/PID", "/img/1/x.jpg", "/"])
def test_reads_need_the_token_and_our_host(server, path):
    review, port, pid = server
    path = path.replace("PID", str(pid))
    assert _get(port, path)[0] == 403  # no token: nothing is read
    assert _get(port, path, "nope")[0] == 403
    assert _get(port, path, review.token, host="evil.example")[0] == 421  # DNS rebinding reads nothing
    if path.startswith("/api"):
        assert _get(port, path, review.token)[0] == 200  # with it the API answers


def test_page_sets_a_port_scoped_strict_cookie_and_strict_headers(server):
    import urllib.request

    review, port, pid = server
    answer = urllib.request.urlopen(review.url())
    html = answer.read().decode()
    assert f'content="{review.token}"' in html
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"maskkit_audit_{port}={review.token}") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    csp = answer.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in html and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    # the cookie alone reads the API (images, reloads) ...
    jar = f"Cookie: maskkit_audit_{port}={review.token}\r\n"
    code, state = _get(port, "/api/state", extra=jar)
    assert code == 200 and state["queue"]
    # ... but never writes: a POST must repeat the token in its header
    code, answer = _raw(port, (f"POST /api/action HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
                               f"\r\n{jar}Content-Length: {len(_flip(pid))}\r\n\r\n").encode() + _flip(pid))
    assert code == 403 and "X-Maskkit-Token" in answer["error"]
    # JSON answers carry the headers too
    code, _ = _get(port, "/api/progress", review.token)
    assert code == 200


def test_each_server_has_its_own_token(catalog):
    from maskkit.review.server import AuditApp

    queue = build_queue(catalog, count=2)
    assert AuditApp(catalog, queue, "a").token != AuditApp(catalog, queue, "a").token


def test_idle_connections_are_closed(server):
    review, port, pid = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/st")  # half a request, then silence
        assert sock.recv(1) == b""  # the server hangs up on a silent client (idle_timeout=1.5 here)
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("host, header, allowed", [
    ("127.0.0.1", "127.0.0.1:PORT", True),
    ("127.0.0.1", "localhost:PORT", True),
    ("127.0.0.1", "[::1]:PORT", True),
    ("127.0.0.1", "10.1.2.3:PORT", False),
    ("127.0.0.1", "evil.example:PORT", False),
    ("127.0.0.1", "127.0.0.1", False),  # no port: port 80, not ours
    ("0.0.0.0", "10.1.2.3:PORT", True),  # an address never rebinds
    ("0.0.0.0", "[fe80::1]:PORT", True),
    ("0.0.0.0", "evil.example:PORT", False),
    ("0.0.0.0", "", False),
    ("0.0.0.0", "[::1", False),
    ("0.0.0.0", "127.0.0.1:abc", False),
])
def test_host_rule(catalog, host, header, allowed):
    from maskkit.review.server import AuditApp

    review = AuditApp(catalog, build_queue(catalog, count=1), "a")
    review.bind(host, 8123)
    assert review.host_allowed(header.replace("PORT", "8123")) is allowed


def test_cli_prints_the_tokened_url_and_what_0000_exposes(catalog):
    from maskkit.review.server import AuditApp, exposure_note

    review = AuditApp(catalog, build_queue(catalog, count=1), "a")
    review.bind("0.0.0.0", 8123)
    assert review.url("0.0.0.0") == f"http://127.0.0.1:8123/?token={review.token}"
    assert "every network interface" in exposure_note("0.0.0.0") and "token" in exposure_note("0.0.0.0")
    assert exposure_note("127.0.0.1") is None
