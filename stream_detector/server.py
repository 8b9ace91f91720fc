"""One small HTTP server: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Every connection has its own thread, at most ``max_connections`` of them: one more is
answered ``503`` and closed at once, without a thread. A connection lives ``timeout_s``
from its accept at most, however it spends it: a client that sends nothing, trickles its
request a byte at a time or reads nothing is dropped at that deadline (every read and
write on its socket waits only for what is left of it), so it holds a thread for
``timeout_s`` at most and never delays a scrape beyond the cap.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 22\r\nConnection: close\r\n\r\ntoo many connections\r\n")


class _DeadlineReader(io.RawIOBase):
    """Reads from ``sock``, each read waiting only for what is left until ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self.connections = 0
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.refused += 1
            try:
                request.setblocking(False)
                request.send(_BUSY)  # whatever fits in the socket buffer, never waits
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self.connections += 1
        try:
            t = threading.Thread(target=self.process_request_thread,
                                 args=(request, client_address), name="http-conn",
                                 daemon=True)
            t.start()
        except BaseException:
            self._release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up mid-request is no error worth a traceback
        on stderr (socketserver's default); anything else is."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def _release(self) -> None:
        with self._lock:
            self.connections -= 1
        self._slots.release()


class HealthServer:
    """Serves metrics from ``registry``; ``alive()`` and ``ready()`` return (ok, reason).

    ``timeout_s``: the most one connection lives; ``max_connections``: the most served at
    once (Prometheus and the kubelet need a handful)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry,
        alive: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]],
        timeout_s: float = 5.0, max_connections: int = 16,
    ) -> None:
        if timeout_s <= 0 or max_connections < 1:
            raise ValueError("timeout_s must be > 0 and max_connections >= 1")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # StreamRequestHandler.setup() puts this on the socket; setup() below then
            # bounds the whole connection, not each read, by the same time
            timeout = timeout_s

            def setup(self) -> None:
                super().setup()
                self._deadline = time.monotonic() + timeout_s
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection,
                                                               self._deadline))

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
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.close_connection = True
                    return
                # sendall's timeout bounds the whole send (Python >= 3.5), headers and body
                self.connection.settimeout(left)
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # a client that stopped reading, or hung up
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.registry = registry
        self.alive = alive
        self.ready = ready
        self._httpd = _Server((host, port), Handler, max_connections)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._httpd.connections

    @property
    def refused(self) -> int:
        """Connections refused since the start, all slots being taken."""
        return self._httpd.refused

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
