"""The alerting rules: promtool check/test, one firing and one silent case per alert,
annotations and runbook sections, and only metrics the service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from stream_detector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "stream-detector.rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "stream-detector.rules.test.yaml"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"

# The alerts the deploy story promises (the list), by rule name.
REQUIRED_ALERTS = {
    "StreamDetectorDown",
    "StreamDetectorConsumerLagGrowing",
    "StreamDetectorAnomalyRateHigh",
    "StreamDetectorInvalidMessagesHigh",
    "StreamDetectorInferenceLatencyHigh",
    "StreamDetectorModelStale",
    # issue 21: input stalls, failed deliveries, lag as Kafka Exporter measures it
    "StreamDetectorInputStalled",
    "StreamDetectorInputMissing",
    "StreamDetectorKafkaLagGrowing",
    "StreamDetectorDeliveryFailing",
}

# Series the rules may read that the detector does not export: Prometheus' own `up`, and
# Strimzi's Kafka Exporter (danielqsj/kafka_exporter), which measures the consumer group on
# the broker side and so keeps reporting when every replica is stuck or gone.
EXTERNAL_METRICS = {"up", "kafka_consumergroup_lag"}
# Named by the contract (/metrics) but not exported yet; an alert may rely on it already.
# Remove from here when stream_detector/metrics.py has it.
CONTRACT_METRICS: set[str] = set()

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; CI installs it)",
)

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}


def exported_metric_names() -> set[str]:
    """Every sample name the service can export, from its own metric bundle."""
    names: set[str] = set()
    for family in Metrics.create().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges, grouping and
    function names are not metric names)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if m.group(0).lower() not in PROMQL_WORDS:
            names.add(m.group(0))
    return names


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_metric_name_extraction():
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="y{"}[5m]))) > 0.5 '
        "and on (job) b_total offset 5m unless absent(c) or time() - d > 30 * 86400"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


@needs_promtool
def test_promtool_check_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests():
    out = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_required_alerts_exist():
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert REQUIRED_ALERTS <= set(names), f"missing: {REQUIRED_ALERTS - set(names)}"


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names <= fires, f"no firing test for {names - fires}"
    assert names <= silent, f"no silent test for {names - silent}"


def test_alerts_have_severity_summary_description_and_runbook():
    runbook = RUNBOOK.read_text()
    bases: set[str] = set()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", runbook, re.M)
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        base, _, anchor = ann["runbook_url"].partition("#")
        # Absolute (a relative link is broken in Alertmanager and Grafana), one base for all.
        url = urlparse(base)
        assert url.scheme == "https" and url.netloc, f"{name}: {ann['runbook_url']}"
        bases.add(base)
        assert anchor in headings, f"{name}: no section #{anchor} in deploy/RUNBOOK.md"
        # The section says when it fires and what to do about it.
        section = runbook.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("Fires when", "Impact", "Diagnose", "Mitigate"):
            assert part in section, f"{name}: runbook section lacks {part!r}"
    assert len(bases) == 1, f"runbook_url bases differ: {bases}"


def test_rules_use_only_exported_metrics():
    exported = exported_metric_names() | EXTERNAL_METRICS | CONTRACT_METRICS
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: unknown metrics {used - exported}"
