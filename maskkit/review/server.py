"""The audit web server: one local page, a small JSON API, cached review images.

Binds 127.0.0.1 by default (reach it from a laptop with `ssh -L PORT:127.0.0.1:PORT server`).

Other web pages the reviewer has open cannot drive it:
- every request needs the server's token (made anew per server): the URL the terminal prints carries it
  once (`/?token=...`), the page then holds it in a same-site cookie scoped to this port, and every POST
  must also repeat it in the `X-Maskkit-Token` header, which a cross-site form or `no-cors` fetch cannot set;
- a POST must be `application/json` (a cross-site form can only send text/plain, urlencoded or multipart);
- the `Host` header must name this server (a loopback name, an IP literal, or this machine's names when
  bound to every interface), which defeats DNS rebinding; an `Origin` or `Sec-Fetch-Site` header, when sent,
  must be this server's;
- answers carry a strict Content-Security-Policy (scripts only by this page's nonce, no framing),
  `X-Frame-Options: DENY`, `nosniff` and `no-referrer` (the token never leaks through a Referer);
- idle connections are closed after `IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlparse

from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import DataRoot, Image, Profile
from ..errors import InvalidInput, MaskkitError, NotFound
from .actions import MAX_BODY, act, parse_action_request, person_view, public_view
from .queue import Queue, progress, resume_index
from .thumbs import ThumbCache

IDLE_TIMEOUT = 20.0  # seconds a connection may sit without sending a request
TOKEN_HEADER = "X-Maskkit-Token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class AuditApp:
    """State shared by the request handlers."""

    def __init__(self, catalog: Catalog, queue: Queue, reviewer: str, thumbs: ThumbCache | None = None,
                 views: dict[str, Queue] | None = None):
        """`queue`: what the page opens on; `views`: name -> queue, the orders the page can switch between
        (the suspects' one ranking and each field's own list), `queue` among them."""
        self.catalog = catalog
        self.views = dict(views or {})
        self.view = next((name for name, q in self.views.items() if q is queue), None)  # its name
        if self.view is None:
            self.view = queue.order
            self.views = {self.view: queue, **self.views}
        self.reviewer = reviewer
        self.thumbs = thumbs or ThumbCache()
        self.paths: dict[int, tuple[Path, str]] = {}
        self.warmer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="thumbs")
        self.lock = threading.Lock()
        self.page = (files("maskkit.review") / "static" / "audit.html").read_bytes()
        # the page and API act on these queues' people only
        self.allowed = set().union(*(set(q.profile_ids) for q in self.views.values()))
        self.token = secrets.token_urlsafe(24)
        self.port = 0  # set by make_server once bound
        self.host_names: set[str] = set(LOOPBACK_NAMES)

    @property
    def cookie_name(self) -> str:
        return f"maskkit_audit_{self.port}"  # cookies are shared across ports: one name per server

    def url(self, host: str = "127.0.0.1", query: str = "") -> str:
        """The page's address with the token: what the terminal prints and a browser opens."""
        shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
        if ":" in shown:
            shown = f"[{shown}]"
        extra = f"&{query.lstrip('?&')}" if query else ""
        return f"http://{shown}:{self.port}/?token={self.token}{extra}"

    def bind(self, host: str, port: int) -> None:
        """Record where the server listens: the names a Host header may carry."""
        self.port = port
        if host not in WILDCARD_HOSTS:
            self.host_names.add(host.lower())
            return
        self.host_names.add("*ip")  # any IP literal: DNS rebinding needs a name, never an address
        for name in {socket.gethostname(), socket.getfqdn()}:
            if name:
                self.host_names.add(name.lower())

    def host_allowed(self, header: str | None) -> bool:
        if not header:
            return False
        host, port = _split_host(header)
        if host is None or port != self.port:
            return False
        if host in self.host_names:
            return True
        if "*ip" in self.host_names:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    def token_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def image_source(self, image_id: int) -> tuple[Path, str]:
        with self.lock:
            if image_id in self.paths:
                return self.paths[image_id]
        with self.catalog.session() as session:
            row = session.execute(
                select(DataRoot.path, Image.path, Image.sha1, Image.profile_id).join(Profile, Profile.id == Image.profile_id)
                .join(DataRoot, DataRoot.id == Profile.root_id).where(Image.id == image_id)
            ).first()
        if row is None or row[3] not in self.allowed:
            raise NotFound(f"unknown image {image_id} (or not in this review queue)")
        source = (Path(row[0]) / row[1], row[2])
        with self.lock:
            self.paths[image_id] = source
        return source

    def warm(self, view: dict) -> None:
        """Render the person's review images in the background so the page never waits on them."""
        for image in view["images"]:
            self.warmer.submit(lambda i=image: self.thumbs.get(*self.image_source(i["id"])))

    @property
    def queue(self) -> Queue:
        """The list the page opens on."""
        return self.views[self.view]

    def queue_of(self, view: str | None) -> Queue:
        """The queue a view names (None: the one the page opened on)."""
        if view is None or view == "":
            return self.queue
        if view not in self.views:
            raise InvalidInput(f"unknown view {view[:40]!r} (views: {', '.join(self.views)})")
        return self.views[view]

    def state(self, reviewer: str, view: str | None = None) -> dict:
        queue = self.queue_of(view)
        ids = queue.profile_ids
        with self.catalog.session() as session:
            names = dict(session.execute(select(Profile.id, Profile.person_id).where(Profile.id.in_(ids))).all())
        return {
            "reviewer": reviewer,
            "view": view or self.view,
            "views": list(self.views),
            "queue": [{"profile_id": i, "person_id": names.get(i, "?"), "hint": queue.hints.get(i)} for i in ids],
            "index": resume_index(self.catalog, queue, reviewer),
            "progress": progress(self.catalog, queue),
        }


def _split_host(header: str) -> tuple[str | None, int | None]:
    """'name:port' / '[::1]:port' -> (lower-case name, port); (None, None) when malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None, None
        host, rest = header[1:end], header[end + 1:]
        if not rest.startswith(":"):
            return host, 80 if not rest else None
        port = rest[1:]
    else:
        host, sep, port = header.rpartition(":")
        if not sep:
            return header, 80
    return (host, int(port)) if port.isdigit() else (None, None)


def _page_with_nonce(page: bytes, nonce: str, token: str) -> bytes:
    """The page's inline <script>/<style> carry this answer's CSP nonce; the token sits in a meta tag."""
    tagged = page.replace(b"<script>", f'<script nonce="{nonce}">'.encode())
    tagged = tagged.replace(b"<style>", f'<style nonce="{nonce}">'.encode())
    return tagged.replace(b"<head>", f'<head>\n<meta name="maskkit-token" content="{token}">'.encode(), 1)


def make_handler(app: AuditApp, idle_timeout: float = IDLE_TIMEOUT):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "maskkit-audit"
        timeout = idle_timeout  # StreamRequestHandler: a socket that sends nothing this long is closed

        def log_message(self, *args):  # quiet: the terminal shows the URL and progress only
            pass

        def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store",
                  csp: str = "default-src 'none'; frame-ancestors 'none'", extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("Content-Security-Policy", csp)
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, payload, status: int = 200) -> None:
            self._send(status, json.dumps(payload, default=str).encode(), "application/json")

        def _reviewer(self, query) -> str:
            return (query.get("reviewer") or [app.reviewer])[0]

        def _view(self, query) -> str | None:
            return (query.get("view") or [None])[0]

        def _cookie_token(self) -> str | None:
            try:
                jar = SimpleCookie(self.headers.get("Cookie") or "")
            except CookieError:
                return None
            morsel = jar.get(app.cookie_name)
            return morsel.value if morsel else None

        def _refuse_foreign(self, *, post: bool) -> bool:
            """Answer 403/421 and return True when the request does not come from this server's page."""
            if not app.host_allowed(self.headers.get("Host")):
                self.close_connection = True
                self._json({"error": "Host header does not name this server"}, HTTPStatus.MISDIRECTED_REQUEST)
                return True
            origin = self.headers.get("Origin")
            if origin is not None and (origin == "null" or not app.host_allowed(urlparse(origin).netloc)
                                       or urlparse(origin).scheme != "http"):
                self._json({"error": f"cross-origin request from {origin[:80]!r} refused"}, HTTPStatus.FORBIDDEN)
                return True
            site = self.headers.get("Sec-Fetch-Site")
            if site is not None and site not in ("same-origin", "none"):
                self._json({"error": f"cross-site request ({site[:20]}) refused"}, HTTPStatus.FORBIDDEN)
                return True
            return False

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            query = parse_qs(url.query)
            parts = [p for p in url.path.split("/") if p]
            if parts == ["favicon.ico"]:
                self._send(204, b"", "image/x-icon")
                return
            if self._refuse_foreign(post=False):
                return
            given = (query.get("token") or [None])[0] if not parts else None
            if not (app.token_matches(given) or app.token_matches(self.headers.get(TOKEN_HEADER))
                    or app.token_matches(self._cookie_token())):
                self._json({"error": "this review server needs its token: open the URL that maskkit audit printed"},
                           HTTPStatus.FORBIDDEN)
                return
            try:
                if not parts:
                    nonce = secrets.token_urlsafe(16)
                    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                           "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
                    cookie = f"{app.cookie_name}={app.token}; Path=/; HttpOnly; SameSite=Strict"
                    self._send(200, _page_with_nonce(app.page, nonce, app.token), "text/html; charset=utf-8",
                               csp=csp, extra={"Set-Cookie": cookie})
                elif parts == ["api", "state"]:
                    self._json(app.state(self._reviewer(query), self._view(query)))
                elif parts == ["api", "progress"]:
                    self._json(progress(app.catalog, app.queue_of(self._view(query))))
                elif len(parts) == 3 and parts[:2] == ["api", "person"]:
                    pid = int(parts[2])
                    if pid not in app.allowed:
                        self._json({"error": f"person {pid} is not in this review queue"}, 403)
                        return
                    view = person_view(app.catalog, pid, self._reviewer(query))
                    app.warm(view)
                    self._json(public_view(view))
                elif len(parts) == 3 and parts[0] == "img":
                    path, sha1 = app.image_source(int(parts[1]))
                    self._send(200, app.thumbs.get(path, sha1), "image/jpeg", "private, max-age=31536000, immutable")
                else:
                    self._json({"error": f"not found: {url.path}"}, 404)
            except (MaskkitError, ValueError) as exc:
                self._json({"error": str(exc)}, 400)
            except Exception as exc:  # never leave a request without an answer
                self._json({"error": f"internal error: {type(exc).__name__}"}, 500)

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            raw = self.headers.get("Content-Length")
            try:
                length = int(raw) if raw is not None else -1
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                self._json({"error": "a POST needs a valid Content-Length"}, HTTPStatus.LENGTH_REQUIRED)
                return
            if length > MAX_BODY:
                self.close_connection = True
                self._json({"error": f"request body over {MAX_BODY} bytes"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                return
            body = self.rfile.read(length)
            if self._refuse_foreign(post=True):
                return
            if not app.token_matches(self.headers.get(TOKEN_HEADER)):
                self._json({"error": f"a POST needs this server's token in the {TOKEN_HEADER} header"},
                           HTTPStatus.FORBIDDEN)
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                self._json({"error": f"a POST must be application/json, got {content_type or 'no Content-Type'!r}"},
                           HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
                return
            if url.path != "/api/action":
                self._json({"error": f"not found: {url.path}"}, 404)
                return
            try:
                queue = app.queue_of(self._view(parse_qs(url.query)))  # whose progress the answer carries
                req = parse_action_request(body)
                if req.profile_id not in app.allowed:
                    self._json({"error": f"person {req.profile_id} is not in this review queue"}, HTTPStatus.FORBIDDEN)
                    return
                reviewer = req.reviewer or app.reviewer
                result = act(app.catalog, req.profile_id, reviewer, req.action, value=req.value, kind=req.kind,
                             note=req.note)
                result["person"] = public_view(person_view(app.catalog, req.profile_id, reviewer))
                result["progress"] = progress(app.catalog, queue)
                self._json(result)
            except (MaskkitError, ValueError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            except Exception as exc:  # never leave a request without an answer
                self._json({"error": f"internal error: {type(exc).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    return Handler


def make_server(app: AuditApp, host: str = "127.0.0.1", port: int = 8765,
                idle_timeout: float = IDLE_TIMEOUT) -> ThreadingHTTPServer:
    server_class = ThreadingHTTPServer
    if ":" in host:
        class server_class(ThreadingHTTPServer):  # noqa: N801 - an IPv6 address needs an IPv6 socket
            address_family = socket.AF_INET6
    try:
        server = server_class((host, port), make_handler(app, idle_timeout))
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InvalidInput(f"cannot listen on {host}:{port}: {reason} (choose another --port or --host)") from None
    server.daemon_threads = True
    app.bind(host, server.server_address[1])
    return server


def exposure_note(host: str) -> str | None:
    """What binding HOST exposes, for the terminal; None for loopback."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    where = "every network interface of this machine" if host in WILDCARD_HOSTS else f"the network at {host}"
    return (f"--host {host}: the review page and its label-changing API listen on {where}; anyone who can reach "
            "it still needs the token in the printed URL (keep it private; plain HTTP, so use only trusted networks "
            "or SSH port forwarding)")
