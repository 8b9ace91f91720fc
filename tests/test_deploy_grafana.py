"""The Grafana dashboard and alert provisioning: generated from code (grafana-foundation-sdk),
in sync, and every panel query parses and names only metrics the service exports or
cAdvisor's container metrics."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "deploy" / "grafana" / "generate.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "stream-detector.json"
ALERTING = ROOT / "deploy" / "grafana" / "provisioning" / "alerting" / "stream-detector.yaml"
RULES = ROOT / "deploy" / "prometheus" / "stream-detector.rules.yaml"

# Panels the issue asks for (by title in the generator).
REQUIRED_PANELS = {
    "Input events/s",
    "Windows scored/s",
    "Anomalies/s",
    "Reconstruction error vs threshold",
    "Inference latency",
    "Inference batch size",
    "Consumer lag",
    "Invalid messages/s by reason",
    "Active series",
    "Model version per replica",
    "Model reloads by result",
    "Series evicted/s by cause",
    "State ready",
    "Checkpoint duration",
    "Delivery failures by topic kind",
    "CPU per pod",
    "Memory per pod",
    "CPU throttling per pod",
}
# What each new panel must show (by metric name).
PANEL_METRICS = {
    "Model version per replica": "stream_detector_model_info",
    "Model reloads by result": "stream_detector_model_reloads_total",
    "Series evicted/s by cause": "stream_detector_series_evicted_total",
    "State ready": "stream_detector_state_ready",
    "Checkpoint duration": "stream_detector_checkpoint_seconds_bucket",
    "Delivery failures by topic kind": "stream_detector_delivery_failures_total",
    "CPU per pod": "container_cpu_usage_seconds_total",
    "Memory per pod": "container_memory_working_set_bytes",
    "CPU throttling per pod": "container_cpu_cfs_throttled_periods_total",
}
# cAdvisor's series (kubelet /metrics/cadvisor, scraped by kube-prometheus-stack).
CADVISOR = {
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_periods_total",
}
# Grafana 11.x writes schemaVersion 39 and up; grafanalib wrote 12.
MIN_SCHEMA_VERSION = 39


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_generator() -> ModuleType:
    return load_module("stream_detector_grafana_generate", GENERATOR)


# The metric-name helpers live with the rule tests; loaded by path so that this works
# whatever pytest's import mode.
_rules = load_module("_deploy_rules_helpers", Path(__file__).with_name("test_deploy_prometheus_rules.py"))
exported_metric_names = _rules.exported_metric_names
metric_names = _rules.metric_names


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_generator_uses_grafana_foundation_sdk():
    text = GENERATOR.read_text()
    assert "from grafana_foundation_sdk" in text
    assert "grafanalib" not in text


def test_dashboard_is_valid_json_of_a_recent_schema(dashboard):
    assert dashboard["uid"] == "stream-detector" and dashboard["title"]
    assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION, dashboard["schemaVersion"]
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]


def test_checked_in_files_equal_generated_output(gen):
    assert DASHBOARD.read_text() == gen.render_dashboard(), (
        "deploy/grafana/stream-detector.json is stale: run python deploy/grafana/generate.py"
    )
    assert ALERTING.read_text() == gen.render_alerting(), (
        "Grafana alert provisioning is stale: run python deploy/grafana/generate.py"
    )


def test_generator_runs_as_a_script(tmp_path):
    out = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    other = tmp_path / "alerts.yaml"
    out = subprocess.run(
        [sys.executable, str(GENERATOR), "--check", "--datasource-uid", "abc",
         "--alerting-out", str(other)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1  # the file does not exist yet: stale


def test_datasource_variable_makes_it_portable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "instance"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    # "All" pods is the detector's pods (Grafana's union of the values), not ".*": cAdvisor
    # series of every other pod in the namespace would match that.
    pod = variables["pod"]
    assert pod["includeAll"] and not pod.get("allValue"), pod
    assert "$namespace" in pod["query"] and "$instance" in pod["query"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_required_panels_present(dashboard):
    titles = {p["title"] for p in dashboard["panels"]}
    assert REQUIRED_PANELS <= titles, f"missing: {REQUIRED_PANELS - titles}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(ids)
    # The threshold is drawn against the error quantiles.
    panel = next(p for p in dashboard["panels"] if p["title"] == "Reconstruction error vs threshold")
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert "stream_detector_reconstruction_error_bucket" in exprs
    assert "stream_detector_anomaly_threshold" in exprs


def test_panels_show_what_they_are_named_for(gen, dashboard):
    by_title: dict[str, set[str]] = {}
    for title, expr in gen.panel_queries(dashboard):
        by_title.setdefault(title, set()).update(metric_names(gen.expand_variables(expr)))
    for title, metric in PANEL_METRICS.items():
        assert metric in by_title[title], (title, by_title[title])


def test_panel_queries_name_only_exported_metrics(gen, dashboard):
    exported = exported_metric_names()
    queries = gen.panel_queries(dashboard)
    assert len(queries) >= len(REQUIRED_PANELS)
    for title, expr in queries:
        used = metric_names(gen.expand_variables(expr))
        assert used, title
        assert used <= exported | CADVISOR, f"{title}: unknown metrics {used - exported - CADVISOR}"
        # Every query is filtered by the dashboard's variables: the detector's own series by
        # namespace/job/instance, cAdvisor's (which have none of job/instance) by its pods.
        assert not (used & CADVISOR and used & exported), f"{title}: mixes both kinds"
        needed = ("$namespace", "$pod") if used & CADVISOR else ("$namespace", "$job", "$instance")
        for var in needed:
            assert var in expr, f"{title}: no {var} filter"


def test_model_changes_are_annotated(gen, dashboard):
    """Every model swap (hot reload, promotion) is marked on every panel: a change of the
    loaded model's creation time, on the dashboard's data source and filters."""
    (annotation,) = [a for a in dashboard["annotations"]["list"] if a["name"] == "Model changes"]
    assert annotation["enable"] and annotation["datasource"] == {
        "type": "prometheus", "uid": "${datasource}"}
    expr = annotation["expr"]
    assert re.search(r"changes\(stream_detector_model_created_timestamp_seconds\{[^}]*\}\[\w+\]\)", expr)
    assert metric_names(gen.expand_variables(expr)) <= exported_metric_names()
    for var in ("$namespace", "$job", "$instance"):
        assert var in expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_panel_queries_parse(gen, dashboard, tmp_path):
    """Each query, variables expanded as Grafana would, as a recording rule: promtool
    parses every expression and reports the ones that do not parse."""
    queries = gen.panel_queries(dashboard)
    queries += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    rules = [
        {"record": f"panel:query_{i}", "expr": gen.expand_variables(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "panels.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def test_grafana_alerts_mirror_the_prometheus_rules():
    prom = [
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    ]
    doc = yaml.safe_load(ALERTING.read_text())
    assert doc["apiVersion"] == 1
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert [r["title"] for r in rules] == [r["alert"] for r in prom]
    for group in doc["groups"]:
        assert group["folder"] and group["interval"] and group["orgId"] == 1
    uids = [r["uid"] for r in rules]
    assert len(set(uids)) == len(uids)
    for grafana, source in zip(rules, prom):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", grafana["uid"]), grafana["uid"]
        refs = {d["refId"]: d for d in grafana["data"]}
        assert grafana["condition"] in refs
        assert refs["A"]["model"]["expr"] == source["expr"].strip()
        assert refs["A"]["datasourceUid"] == refs["A"]["model"]["datasource"]["uid"]
        assert grafana["for"] == source["for"]
        assert grafana["labels"] == source["labels"]
        assert grafana["noDataState"] == "OK"  # no series = no alert, as in Prometheus
        assert set(grafana["annotations"]) == set(source["annotations"])
        for text in grafana["annotations"].values():
            # Grafana's $value is text; numbers come from $values.<refId>.Value.
            assert not re.search(r"\$value\b(?!s)", text)
        # Labels are interpolated from the environment by Grafana's file provisioning.
        assert not any("$" in v for v in grafana["labels"].values())
