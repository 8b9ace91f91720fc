"""Drive the real ``stream-detector`` commands in subprocesses: train a small model, run
the service and read its metrics endpoint.

For the test suite and for ``scripts/`` (bench, soak, profile), which need the same
harness; nothing in the package itself uses it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.kafka.embedded import free_port

# a consumer group joins in ~3 s with these, over 20 s with librdkafka's defaults
FAST_GROUP = ["--kafka", "session.timeout.ms=6000", "--kafka", "max.poll.interval.ms=10000"]


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stream_detector ARGS`` and return the finished process."""
    proc = subprocess.run([sys.executable, "-m", "stream_detector", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"stream-detector {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def wave(n: int, seed: int, period: float = 20.0, level: float = 10.0) -> np.ndarray:
    """A noisy sine wave (n,) float32: the normal behaviour of the test and bench series."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    out: np.ndarray = (level + 2.0 * np.sin(2 * np.pi * t / period + seed)
                       + rng.normal(0, 0.1, n)).astype(np.float32)
    return out


def write_long(path: Path, series: dict[str, np.ndarray], start: float = 1_767_225_600.0,
               step: float = 60.0) -> Path:
    """Write equal-length ``series`` as a ``long`` CSV, a point every ``step`` seconds."""
    with path.open("w") as fh:
        fh.write("timestamp,key,value\n")
        n = len(next(iter(series.values())))
        for i in range(n):
            for key, vals in series.items():
                fh.write(f"{start + i * step:.0f},{key},{float(vals[i]):.5f}\n")
    return path


def train_wave_model(out: Path, window: int | None = 32, kind: str = "conv1d",
                     epochs: int | None = 12, decision: str | None = "static") -> Path:
    """Train a small model on clean waves (the family the tests and the bench stream).

    ``window``, ``epochs`` or ``decision`` None: train's default (no flag). The tests keep
    the seed's fixed threshold (``static``): they steer it (with_threshold) and count its
    flags; the bench trains at train's defaults.
    """
    data = out.parent / f"{out.name}-train.csv"
    write_long(data, {f"train-{i}": wave(600, seed=100 + i) for i in range(4)})
    flags = [*(["--window", str(window)] if window is not None else []),
             *(["--epochs", str(epochs)] if epochs is not None else []),
             *(["--decision", decision] if decision is not None else [])]
    cli("train", "--model", kind, "--input", str(data), *flags, "--out", str(out), "--seed",
        "1", "--quiet")
    return out


class MetricMissing(AssertionError):
    """A metric a test reads is not exposed. Never read as 0: a renamed metric would then
    pass every ``== 0`` check."""


class MetricsUnreachable(AssertionError):
    """The metrics endpoint did not answer (not started yet, or exited)."""


# what a family called NAME exposes samples as (counters: NAME_total, NAME_created; ...)
_SAMPLE_SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum", "_info",
                    "_gcount", "_gsum")


def sample_value(families: Iterable[Metric], name: str,
                 labels: Mapping[str, str] | None = None, *, absent_ok: bool = False) -> float:
    """The value of sample ``name`` with exactly ``labels``.

    A sample no metric family can expose (a renamed or unregistered metric) raises
    :class:`MetricMissing`, always. A sample of an existing family that is not there
    raises too, unless ``absent_ok``: prometheus_client shows a labelled series only once
    it is touched, so a counter whose label value has not happened yet is 0 then."""
    families = list(families)
    want = dict(labels or {})
    for fam in families:
        for sample in fam.samples:
            if sample.name == name and sample.labels == want:
                return float(sample.value)
    shown = f"{name}{want}" if want else name
    if not any(name == fam.name + suffix for fam in families for suffix in _SAMPLE_SUFFIXES):
        raise MetricMissing(f"no metric family exposes {shown} (renamed? not registered?)")
    if absent_ok:
        return 0.0
    raise MetricMissing(f"{shown} is not exposed (its family is; pass absent_ok=True where "
                        "a labelled series may not have been touched yet)")


def registry_value(registry: CollectorRegistry, name: str,
                   labels: Mapping[str, str] | None = None, *, absent_ok: bool = False) -> float:
    """:func:`sample_value` of an in-process registry."""
    return sample_value(registry.collect(), name, labels, absent_ok=absent_ok)


def split_sample_key(key: str) -> tuple[str, dict[str, str]]:
    """``name{a="x",b="y"}`` (the keys of :meth:`DetectorProcess.metrics`) -> (name, labels)."""
    m = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
    if m is None:
        raise ValueError(f"not a sample key: {key!r}")
    return m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               detail: Callable[[], str] | None = None) -> None:
    """Poll ``pred`` every 0.2 s; raise AssertionError naming ``what`` after ``timeout`` s.
    A metrics endpoint not answering yet (:class:`MetricsUnreachable`) counts as "not yet";
    any other error, a missing metric included, ends the wait at once."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except MetricsUnreachable as exc:
            last = f" (last: {exc})"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}{last}. {detail() if detail else ''}")


class DetectorProcess:
    """``stream-detector run`` in a subprocess, with its metrics endpoint."""

    def __init__(self, bootstrap: str, input_topic: str, output_topic: str, group: str,
                 model: Path, extra: Sequence[str] = (), log: Path | None = None) -> None:
        self.port = free_port()
        self.log = log
        args = [sys.executable, "-m", "stream_detector", "run", "--bootstrap-servers", bootstrap,
                "--input-topic", input_topic, "--output-topic", output_topic,
                "--group-id", group, "--model", str(model), "--metrics-port", str(self.port),
                "--metrics-host", "127.0.0.1", "--commit-interval-ms", "200", *FAST_GROUP,
                *extra]
        out: IO[str] | int = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of ``path`` on the metrics port; (0, "") when unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Every sample as ``name{label="v",...}`` -> value (labels sorted)."""
        code, text = self.get("/metrics")
        if code != 200:
            return {}
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def value(self, name: str, *, absent_ok: bool = False) -> float:
        """The sample ``name`` (a :meth:`metrics` key, ``name{label="v"}``). A metric no
        family exposes raises :class:`MetricMissing`; a labelled series not touched yet
        does too unless ``absent_ok``; an endpoint that does not answer raises
        :class:`MetricsUnreachable` (which :func:`wait_until` waits through)."""
        code, text = self.get("/metrics")
        if code != 200:
            raise MetricsUnreachable(f"GET /metrics on port {self.port}: {code or 'no answer'}")
        metric, labels = split_sample_key(name)
        return sample_value(text_string_to_metric_families(text), metric, labels,
                            absent_ok=absent_ok)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout, "detector ready",
                   self._tail)

    def wait_value(self, name: str, at_least: float, timeout: float = 90, *,
                   absent_ok: bool = False) -> float:
        def now() -> str:
            try:
                return f"now {self.value(name, absent_ok=absent_ok)}. "
            except MetricsUnreachable as exc:
                return f"{exc}. "

        wait_until(lambda: self.value(name, absent_ok=absent_ok) >= at_least, timeout,
                   f"{name} >= {at_least}", lambda: now() + self._tail())
        return self.value(name, absent_ok=absent_ok)

    def _tail(self) -> str:
        if self.proc.poll() is not None:
            return f"detector exited {self.proc.returncode}: " + (
                self.log.read_text()[-3000:] if self.log else "")
        return self.log.read_text()[-3000:] if self.log else ""

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The process' resident set (or, with ``VmHWM``, its peak so far), MB; nan once
        it has exited."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return float("nan")
        for line in status.splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
