"""A local HTTP server on 127.0.0.1 for download tests (no test may reach the internet)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    """What the server serves (path -> bytes), what it was asked, and how to misbehave."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files: dict[str, bytes] = dict(files or {})
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        self.honour_range = True
        self.truncate_next = 0  # cut this many responses off halfway
        self.status_override: int | None = None


class Handler(BaseHTTPRequestHandler):
    """Serves `state.files`, honouring Range requests unless told not to."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        state: State = self.server.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        if state.status_override:
            self.send_error(state.status_override)
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and state.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.truncate_next:
            state.truncate_next -= 1
            body = body[: len(body) // 2]
            self.close_connection = True
        # Counted before it is sent: the client may check the count as soon as it has
        # read the body, before this thread would get past write().
        state.bytes_sent += len(body)
        self.wfile.write(body)


@contextlib.contextmanager
def serve(files: dict[str, bytes] | None = None) -> Iterator[ThreadingHTTPServer]:
    """A threaded server on 127.0.0.1 and an ephemeral port (`.state`, `.url`), shut down
    afterwards."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = State(files)
    host, port = httpd.server_address[:2]
    httpd.url = f"http://{host}:{port}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
