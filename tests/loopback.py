"""A loopback HTTP server for download tests: Range requests and scripted failures."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # bytes sent before dropping the next response
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # every path asked for, in order


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``state.files`` with ``Range: bytes=N-`` support and scripted failures."""

    server: ThreadingHTTPServer  # carries a ``state`` attribute

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.ranges.append(requested)
        state.paths.append(self.path)
        if self.path == "/error":
            self.send_error(500, "boom")
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "no such file")
            return
        start = 0
        if requested and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self._headers(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
                return
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self._headers(
                206, {"Content-Range": content_range, "Content-Length": len(body) - start}
            )
        else:
            self._headers(200, {"Content-Length": len(body)})
        self._send_body(state, body[start:])

    def _headers(self, status: int, headers: dict[str, object]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()

    def _send_body(self, state: ServerState, payload: bytes) -> None:
        if state.cut_after is not None:
            # Promise the full length, send part of it, then hang up.
            payload, state.cut_after = payload[: state.cut_after], None
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output quiet."""


@contextmanager
def serving() -> Iterator[tuple[str, ServerState]]:
    """A server on 127.0.0.1 in a thread: its base URL and its state."""
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
