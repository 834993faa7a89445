"""The audit web server: one local page, a small JSON API, cached review images.

Binds 127.0.0.1 by default (reach it from a laptop with `ssh -L PORT:127.0.0.1:PORT server`).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import DataRoot, Image, Profile
from ..errors import MaskkitError
from .actions import MAX_BODY, act, parse_action_request, person_view, public_view
from .queue import Queue, progress, resume_index
from .thumbs import ThumbCache


class AuditApp:
    """State shared by the request handlers."""

    def __init__(self, catalog: Catalog, queue: Queue, reviewer: str, thumbs: ThumbCache | None = None):
        self.catalog = catalog
        self.queue = queue
        self.reviewer = reviewer
        self.thumbs = thumbs or ThumbCache()
        self.paths: dict[int, tuple[Path, str]] = {}
        self.warmer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="thumbs")
        self.lock = threading.Lock()
        self.page = (files("maskkit.review") / "static" / "audit.html").read_bytes()
        self.allowed = set(queue.profile_ids)  # the page and API act on this queue's people only

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
            raise MaskkitError(f"unknown image {image_id} (or not in this review queue)")
        source = (Path(row[0]) / row[1], row[2])
        with self.lock:
            self.paths[image_id] = source
        return source

    def warm(self, view: dict) -> None:
        """Render the person's review images in the background so the page never waits on them."""
        for image in view["images"]:
            self.warmer.submit(lambda i=image: self.thumbs.get(*self.image_source(i["id"])))

    def state(self, reviewer: str) -> dict:
        ids = self.queue.profile_ids
        with self.catalog.session() as session:
            names = dict(session.execute(select(Profile.id, Profile.person_id).where(Profile.id.in_(ids))).all())
        return {
            "reviewer": reviewer,
            "queue": [{"profile_id": i, "person_id": names.get(i, "?"), "hint": self.queue.hints.get(i)} for i in ids],
            "index": resume_index(self.catalog, self.queue, reviewer),
            "progress": progress(self.catalog, self.queue),
        }


def make_handler(app: AuditApp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "maskkit-audit"

        def log_message(self, *args):  # quiet: the terminal shows the URL and progress only
            pass

        def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, payload, status: int = 200) -> None:
            self._send(status, json.dumps(payload, default=str).encode(), "application/json")

        def _reviewer(self, query) -> str:
            return (query.get("reviewer") or [app.reviewer])[0]

        def do_GET(self):  # noqa: N802
            url = urlparse(self.path)
            query = parse_qs(url.query)
            parts = [p for p in url.path.split("/") if p]
            try:
                if not parts:
                    self._send(200, app.page, "text/html; charset=utf-8")
                elif parts == ["api", "state"]:
                    self._json(app.state(self._reviewer(query)))
                elif parts == ["api", "progress"]:
                    self._json(progress(app.catalog, app.queue))
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
                    self._send(200, app.thumbs.get(path, sha1), "image/jpeg", "public, max-age=31536000, immutable")
                elif parts == ["favicon.ico"]:
                    self._send(204, b"", "image/x-icon")
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
            if url.path != "/api/action":
                self._json({"error": f"not found: {url.path}"}, 404)
                return
            try:
                req = parse_action_request(body)
                if req.profile_id not in app.allowed:
                    self._json({"error": f"person {req.profile_id} is not in this review queue"}, HTTPStatus.FORBIDDEN)
                    return
                reviewer = req.reviewer or app.reviewer
                result = act(app.catalog, req.profile_id, reviewer, req.action, value=req.value, kind=req.kind,
                             note=req.note)
                result["person"] = public_view(person_view(app.catalog, req.profile_id, reviewer))
                result["progress"] = progress(app.catalog, app.queue)
                self._json(result)
            except (MaskkitError, ValueError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            except Exception as exc:  # never leave a request without an answer
                self._json({"error": f"internal error: {type(exc).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    return Handler


def make_server(app: AuditApp, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    try:
        server = ThreadingHTTPServer((host, port), make_handler(app))
    except OSError as exc:
        raise MaskkitError(f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port)") from None
    server.daemon_threads = True
    return server
