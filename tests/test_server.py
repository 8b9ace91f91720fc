"""The metrics/health HTTP server: slow or silent clients never block a scrape."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from stream_detector.server import HealthServer


def _server(timeout_s: float) -> HealthServer:
    reg = CollectorRegistry()
    Counter("stream_detector_probe", "A probe counter.", registry=reg).inc()
    return HealthServer("127.0.0.1", 0, reg, lambda: (True, "alive"), lambda: (True, "ready"),
                        timeout_s=timeout_s).start()


def _scrape_probe(port: int) -> None:
    """GET /metrics answers 200 with the probe counter."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        assert r.status == 200
        assert b"stream_detector_probe_total 1.0" in r.read()


def test_a_silent_client_neither_blocks_metrics_nor_holds_its_connection():
    server = _server(timeout_s=0.5)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        t0 = time.monotonic()
        _scrape_probe(server.port)
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


def _trickle(port: int, stop: threading.Event, every_s: float) -> socket.socket:
    """A client that sends a request one byte at a time, never finishing its headers."""
    s = socket.create_connection(("127.0.0.1", port))
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000

    def drip() -> None:
        for byte in request:
            if stop.wait(every_s):
                return
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return  # the server hung up: what we want

    threading.Thread(target=drip, daemon=True).start()
    return s


def test_a_trickling_client_is_dropped_at_the_deadline_not_held_for_ever():
    """A byte every 0.1 s resets a per-read timeout for ever: the deadline is per
    connection (timeout_s from the accept), and /metrics is served meanwhile."""
    server = _server(timeout_s=0.6)
    stop = threading.Event()
    slow = [_trickle(server.port, stop, every_s=0.1) for _ in range(3)]
    try:
        t0 = time.monotonic()
        _scrape_probe(server.port)
        assert time.monotonic() - t0 < 0.5, "a scrape waited on the trickling clients"
        for s in slow:
            s.settimeout(5)
            try:
                while s.recv(1024):  # maybe a 408, then the close
                    pass
            except ConnectionResetError:
                pass
        held = time.monotonic() - t0
        assert held < 2.0, f"a trickling client held its connection {held:.1f} s"
        deadline = time.monotonic() + 2
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.connections == 0, "a handler thread outlived its connection"
    finally:
        stop.set()
        for s in slow:
            s.close()
        server.stop()


def _handler_threads() -> int:
    return sum(t.name.startswith("http-conn") for t in threading.enumerate())


def test_connections_beyond_the_cap_are_refused_at_once_and_hold_no_thread():
    """`max_connections` handlers at most: one more connection is answered 503 and closed
    without a thread; once the silent ones time out, scrapes are served again."""
    reg = CollectorRegistry()
    Counter("stream_detector_probe", "A probe counter.", registry=reg).inc()
    server = HealthServer("127.0.0.1", 0, reg, lambda: (True, "alive"),
                          lambda: (True, "ready"), timeout_s=1.0, max_connections=4).start()
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    extra = []
    try:
        deadline = time.monotonic() + 2
        while server.connections < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connections == 4
        t0 = time.monotonic()
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port))
            extra.append(s)
            s.settimeout(2)
            reply = b""
            try:
                while chunk := s.recv(1024):
                    reply += chunk
            except ConnectionResetError:
                pass
            assert reply == b"" or reply.startswith(b"HTTP/1.0 503"), reply
        assert time.monotonic() - t0 < 1.0, "a refused connection waited"
        assert server.connections == 4 and _handler_threads() <= 4
        assert server.refused >= 20
        time.sleep(1.3)  # the silent ones time out and free their slots
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2) as r:
            assert r.status == 200
    finally:
        for s in silent + extra:
            s.close()
        server.stop()
