"""One small HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Every connection has its own thread and a socket timeout, so a client that connects and
sends nothing (or reads nothing) holds one thread for ``timeout_s`` at most and never
delays a scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    """Serves metrics from ``registry``; ``alive()`` and ``ready()`` return (ok, reason)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry,
        alive: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]],
        timeout_s: float = 5.0,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # StreamRequestHandler.setup() puts this on the socket: a silent or stalled
            # client is dropped after it instead of holding its thread for ever
            timeout = timeout_s

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (outer.alive if path == "/healthz" else outer.ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.registry = registry
        self.alive = alive
        self.ready = ready
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
