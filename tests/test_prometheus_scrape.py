"""A real Prometheus server scrapes a running detector and evaluates the shipped rules.

Prometheus (Debian package ``prometheus``) runs on loopback with a 1 s scrape and rule
interval and the rules of ``deploy/prometheus/stream-detector.rules.yaml`` with every
``for:`` shortened to 0 s (nothing else changed). The detector consumes from the session's
broker; the test streams two normal series, one of them with an injected spike, and a few
bad messages. Then PromQL over the scraped series must show the anomaly counter rising
from 0, ``StreamDetectorAnomalyRateHigh`` must go to firing, and every panel query of the
Grafana dashboard must run without error (most returning data).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka_helpers import produce_json
from service_helpers import DetectorProcess, train_wave_model, wait_until, wave

from stream_detector.kafka.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "stream-detector.rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "stream-detector.json"
GENERATOR = ROOT / "deploy" / "grafana" / "generate.py"

JOB = "stream-detector"  # the job label the alerts select on
POINTS = 200
SPIKE = range(120, 140)  # 20 points of host-a far above its normal range
WINDOW = 32

# Panels that must return data once the detector has scored the stream (the others may
# legitimately be empty here, e.g. consumer lag before librdkafka's first statistics).
PANELS_WITH_DATA = {
    "Ready replicas",
    "Assigned partitions",
    "Anomaly events published/s",
    "Anomaly threshold",
    "Model age",
    "Input events/s",
    "Windows scored/s",
    "Anomalies/s",
    "Reconstruction error vs threshold",
    "Anomalous window ratio",
    "Inference latency",
    "Inference batch size",
    "Invalid messages/s by reason",
    "Active series",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus not installed (Debian package `prometheus`; CI installs it)",
    ),
]


class PrometheusServer:
    """A throwaway Prometheus on 127.0.0.1 scraping one target."""

    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{"targets": [target], "labels": {"namespace": "scrape-test"}}],
            }],
        }
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with its error text
            return json.load(exc)

    def query(self, expr: str) -> list[dict[str, Any]]:
        doc = self.get("/api/v1/query", query=expr)
        assert doc["status"] == "success", f"{expr!r}: {doc.get('error')}"
        return doc["data"]["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def fast_rules(dest: Path) -> Path:
    """The shipped rules with every ``for:`` set to 0s, so alerts fire within the test."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("stream_detector_grafana_generate", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream(start: float = 1_767_225_600.0) -> list[tuple[str, dict[str, Any]]]:
    """Two normal series interleaved in time; host-a gets a spike."""
    series = {"host-a": wave(POINTS, seed=1).tolist(), "host-b": wave(POINTS, seed=2).tolist()}
    for i in SPIKE:
        series["host-a"][i] += 60.0
    return [
        (key, {"key": key, "ts": start + 60 * i, "value": values[i]})
        for i in range(POINTS)
        for key, values in series.items()
    ]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_wave_model(tmp_path_factory.mktemp("scrape") / "model", window=WINDOW, epochs=2)


@pytest.fixture
def detector(broker_bootstrap, topic_factory, group_id, model, tmp_path) -> Iterator[DetectorProcess]:
    proc = DetectorProcess(
        broker_bootstrap,
        topic_factory(prefix="scrape-in"),
        topic_factory(prefix="scrape-out"),
        group_id,
        model,
        extra=["--dlq-topic", topic_factory(prefix="scrape-dlq"), "--max-batch-latency-ms", "20"],
        log=tmp_path / "detector.log",
    )
    try:
        yield proc
    finally:
        proc.kill()


def test_prometheus_scrapes_anomalies_and_fires_anomaly_rate_alert(detector, broker_bootstrap,
                                                                    tmp_path):
    prom = PrometheusServer(tmp_path, f"127.0.0.1:{detector.port}", fast_rules(tmp_path / "rules.yaml"))
    try:
        wait_until(prom.ready, 30, "prometheus ready", prom.tail)
        detector.wait_ready(timeout=90)

        # Prometheus must see the counters at 0 before any input, or rate() has no start.
        wait_until(
            lambda: bool(prom.query(f'count_over_time(stream_detector_anomalies_total{{job="{JOB}"}}[1m]) >= 2')),
            30, "two scrapes of the idle detector", prom.tail,
        )
        t0 = time.time()
        assert prom.query("stream_detector_anomalies_total")[0]["value"][1] == "0"

        produce_json(broker_bootstrap, detector_input_topic(detector), stream())
        produce_json(broker_bootstrap, detector_input_topic(detector),
                     [("host-a", b"not json"), ("host-b", b"{\"key\": \"host-b\"}")])

        # The anomaly counter rises in the scraped series ...
        wait_until(
            lambda: bool(prom.query(f'increase(stream_detector_anomalies_total{{job="{JOB}"}}[2m]) > 0')),
            60, "anomalies counted in Prometheus", lambda: detector._tail() + prom.tail(),
        )
        # The last step lies after the newest scrape, so it sees the increased value.
        series = prom.get("/api/v1/query_range", query="stream_detector_anomalies_total",
                          start=t0 - 2, end=time.time() + 1, step="1s")["data"]["result"]
        values = [float(v) for _, v in series[0]["values"]]
        assert values[0] == 0 and values[-1] > 0
        assert values == sorted(values), "a counter never goes down"

        # ... and the shipped AnomalyRateHigh rule goes to firing.
        def firing() -> bool:
            alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "StreamDetectorAnomalyRateHigh"
                       and a["state"] == "firing" for a in alerts)

        wait_until(firing, 30, "StreamDetectorAnomalyRateHigh firing",
                   lambda: json.dumps(prom.get("/api/v1/alerts")) + prom.tail())
        alert = next(a for a in prom.get("/api/v1/alerts")["data"]["alerts"]
                     if a["labels"]["alertname"] == "StreamDetectorAnomalyRateHigh")
        assert alert["labels"]["job"] == JOB and alert["labels"]["severity"] == "warning"
        ratio = float(alert["value"])
        assert 0.05 < ratio < 0.5, ratio
        # The stream was all valid except two messages: the detector is not reported down.
        alerts = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["data"]["alerts"]
                  if a["state"] == "firing"}
        assert "StreamDetectorDown" not in alerts

        # Every dashboard query runs against the scraped series.
        gen = load_generator()
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for title, expr in gen.panel_queries(dashboard):
            result = prom.query(gen.expand_variables(expr, rate_interval="1m"))
            if not result:
                empty.append(title)
        assert not (PANELS_WITH_DATA & set(empty)), f"panels without data: {sorted(empty)}"
    finally:
        prom.stop()


def detector_input_topic(detector: DetectorProcess) -> str:
    args = detector.proc.args
    return args[args.index("--input-topic") + 1]
