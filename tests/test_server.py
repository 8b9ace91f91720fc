"""The metrics/health HTTP server: slow or silent clients never block a scrape."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from stream_detector.server import HealthServer


def _server(timeout_s: float) -> HealthServer:
    reg = CollectorRegistry()
    Counter("stream_detector_probe", "A probe counter.", registry=reg).inc()
    return HealthServer("127.0.0.1", 0, reg, lambda: (True, "alive"), lambda: (True, "ready"),
                        timeout_s=timeout_s).start()


def test_a_silent_client_neither_blocks_metrics_nor_holds_its_connection():
    server = _server(timeout_s=0.5)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2) as r:
            assert r.status == 200
            assert b"stream_detector_probe_total 1.0" in r.read()
        assert time.monotonic() - t0 < 1.0, "a scrape waited on the silent clients"
        # the server hangs up on a client that sends nothing, once its timeout is up
        for s in silent:
            s.settimeout(5)
            assert s.recv(1024) == b"", "the silent connection was dropped"
        assert time.monotonic() - t0 < 4.0
    finally:
        for s in silent:
            s.close()
        server.stop()


def test_a_client_that_stops_mid_request_is_dropped():
    server = _server(timeout_s=0.5)
    s = socket.create_connection(("127.0.0.1", server.port))
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never finishes
        s.settimeout(5)
        t0 = time.monotonic()
        s.recv(1024)  # closed (b"") or a 408-style error, then closed
        assert time.monotonic() - t0 < 4.0
    finally:
        s.close()
        server.stop()
