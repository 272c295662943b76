"""A local HTTP server for download tests: serves bytes by path, counts requests, can cut a response short."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FileServer:
    """``files[path] = bytes`` served on 127.0.0.1; ``hits[path]`` counts GETs.

    Paths in ``truncate`` announce their full Content-Length but send only half and close;
    paths in ``no_length`` are sent without a Content-Length (the client reads to the close);
    ``content_types[path]`` is sent as the Content-Type (none otherwise).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.truncate: set[str] = set()
        self.no_length: set[str] = set()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                path = urlsplit(self.path).path
                state.hits[path] += 1
                data = state.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if path in state.content_types:
                    self.send_header("Content-Type", state.content_types[path])
                if path not in state.no_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if path in state.truncate else data)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
