"""Generate the stream-detector Grafana dashboard and Grafana alert rules.

Writes, next to this file:

- ``stream-detector.json``: the dashboard, built with grafanalib. A ``datasource``
  variable (any Prometheus data source) and ``namespace``/``job``/``instance`` filters make
  it work in any Grafana.
- ``provisioning/alerting/stream-detector.yaml``: Grafana unified-alerting file
  provisioning for the same alerts as ``deploy/prometheus/stream-detector.rules.yaml``,
  converted the way Grafana converts Prometheus rules itself: the PromQL expression as
  query ``A``, ``is_number($A) || is_nan($A) || is_inf($A)`` as ``B``, and ``B > 0`` as
  the condition ``C``, so any series the expression returns fires, as in Prometheus.

Usage::

    python deploy/grafana/generate.py            # rewrite both files
    python deploy/grafana/generate.py --check    # exit 1 if a checked-in file is stale
    python deploy/grafana/generate.py --datasource-uid UID --alerting-out FILE
        # alert provisioning for a Grafana whose Prometheus data source has another UID

Only metrics from ``stream_detector/metrics.py`` may appear in a query;
``tests/test_deploy_grafana.py`` checks that, and that every query parses.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

HERE = Path(__file__).resolve().parent
DASHBOARD_PATH = HERE / "stream-detector.json"
ALERTING_PATH = HERE / "provisioning" / "alerting" / "stream-detector.yaml"
RULES_PATH = HERE.parent / "prometheus" / "stream-detector.rules.yaml"

DASHBOARD_UID = "stream-detector"
# kube-prometheus-stack provisions its Prometheus data source with this UID.
DEFAULT_DATASOURCE_UID = "prometheus"
ALERT_FOLDER = "stream-detector"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Label filter every panel query carries; the variables default to "All" (.*).
SEL = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"

# The anomaly-ratio level drawn on the ratio panel: the default of the AnomalyRateHigh alert.
ANOMALY_RATIO_ALERT = 0.05


def _target(expr: str, legend: str, ref: str) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE)


def _timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    pos: tuple[int, int, int, int],
    unit: str = "",
    **kwargs: Any,
) -> TimeSeries:
    x, y, w, h = pos
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
        gridPos=GridPos(h=h, w=w, x=x, y=y),
        unit=unit,
        maxDataPoints=None,  # let Grafana fit the points to the panel width
        **kwargs,
    )


def _quantiles(metric: str, qs: tuple[float, ...], by: str = "") -> list[tuple[str, str]]:
    grouping = f"{by}, le" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({grouping}) "
            f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100):g}",
        )
        for q in qs
    ]


def _threshold_override(name: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
        ],
    }


def _variables() -> Templating:
    def query_var(name: str, label: str, query: str, multi: bool) -> Template:
        return Template(
            name=name,
            label=label,
            query=query,
            dataSource=DATASOURCE,
            includeAll=True,
            allValue=".*",
            multi=multi,
            default="All",
            refresh=2,  # on time range change: pods come and go
        )

    base = "stream_detector_messages_consumed_total"
    return Templating(
        list=[
            Template(
                name="datasource",
                label="Data source",
                query="prometheus",
                type="datasource",
                default="default",
            ),
            query_var("namespace", "Namespace", f"label_values({base}, namespace)", True),
            query_var(
                "job", "Job", f'label_values({base}{{namespace=~"$namespace"}}, job)', True
            ),
            query_var(
                "instance",
                "Instance",
                f'label_values({base}{{namespace=~"$namespace", job=~"$job"}}, instance)',
                True,
            ),
        ]
    )


def build_dashboard() -> Dashboard:
    """Return the dashboard object (grafanalib)."""
    panels: list[Any] = []

    def row(title: str, y: int) -> None:
        panels.append(RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y)))

    # --- Overview -----------------------------------------------------------------------
    row("Overview", 0)
    stats = [
        ("Ready replicas", f"sum(stream_detector_ready{{{SEL}}})", "none",
         "Replicas reporting ready (model loaded, partitions assigned)."),
        ("Assigned partitions", f"sum(stream_detector_assigned_partitions{{{SEL}}})", "none",
         "Input partitions assigned over all replicas."),
        ("Anomaly threshold", f"max(stream_detector_anomaly_threshold{{{SEL}}})", "none",
         "Global threshold of the loaded model (per-key thresholds may differ)."),
        ("Model age", f"time() - min(stream_detector_model_created_timestamp_seconds{{{SEL}}})",
         "s", "Since the oldest loaded model was trained (alert: 30 days)."),
    ]
    for i, (title, expr, unit, desc) in enumerate(stats):
        panels.append(
            Stat(
                title=title,
                description=desc,
                dataSource=DATASOURCE,
                targets=[_target(expr, title, "A")],
                gridPos=GridPos(h=4, w=6, x=6 * i, y=1),
                format=unit,
                reduceCalc="lastNotNull",
                graphMode="none",
                thresholds=[{"color": "text", "value": None}],
            )
        )

    # --- Throughput ---------------------------------------------------------------------
    row("Throughput", 5)
    panels += [
        _timeseries(
            "Input events/s",
            "Input messages consumed per second (valid or not).",
            [(f"sum by (job) (rate(stream_detector_messages_consumed_total{{{SEL}}}[{RATE}]))",
              "{{job}}")],
            (0, 6, 6, 8), unit="ops",
        ),
        _timeseries(
            "Windows scored/s",
            "Windows pushed through the model per second.",
            [(f"sum by (job) (rate(stream_detector_windows_scored_total{{{SEL}}}[{RATE}]))",
              "{{job}}")],
            (6, 6, 6, 8), unit="ops",
        ),
        _timeseries(
            "Anomalies/s",
            "Windows whose score exceeded the threshold, per second.",
            [(f"sum by (job) (rate(stream_detector_anomalies_total{{{SEL}}}[{RATE}]))",
              "{{job}}")],
            (12, 6, 6, 8), unit="ops",
        ),
        _timeseries(
            "Anomaly events published/s",
            "Events confirmed by the broker, by type (opened/closed incidents, or windows).",
            [(f"sum by (type) (rate(stream_detector_events_published_total{{{SEL}}}[{RATE}]))",
              "{{type}}")],
            (18, 6, 6, 8), unit="ops",
        ),
    ]

    # --- Model --------------------------------------------------------------------------
    row("Model", 14)
    panels += [
        _timeseries(
            "Reconstruction error vs threshold",
            "Quantiles of the reconstruction error of scored windows; the dashed line is the "
            "model's global anomaly threshold.",
            _quantiles("stream_detector_reconstruction_error", (0.5, 0.9, 0.99))
            + [(f"max(stream_detector_anomaly_threshold{{{SEL}}})", "threshold")],
            (0, 15, 12, 8),
            scaleDistributionType="log",
            scaleDistributionLog=10,
            overrides=[_threshold_override("threshold")],
        ),
        _timeseries(
            "Anomalous window ratio",
            "Share of scored windows over the threshold. The line marks the default level of "
            "the StreamDetectorAnomalyRateHigh alert.",
            [(
                f"sum by (job) (rate(stream_detector_anomalies_total{{{SEL}}}[{RATE}]))"
                " / "
                f"sum by (job) (rate(stream_detector_windows_scored_total{{{SEL}}}[{RATE}]))",
                "{{job}}",
            )],
            (12, 15, 12, 8),
            unit="percentunit",
            thresholdsStyleMode="line",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "red", "value": ANOMALY_RATIO_ALERT},
            ],
        ),
    ]

    # --- Inference ----------------------------------------------------------------------
    row("Inference", 23)
    panels += [
        _timeseries(
            "Inference latency",
            "Wall time of one batched model call.",
            _quantiles("stream_detector_inference_seconds", (0.5, 0.9, 0.99)),
            (0, 24, 8, 8), unit="s",
        ),
        _timeseries(
            "Inference batch size",
            "Windows per batched model call: quantiles and mean.",
            _quantiles("stream_detector_inference_batch_size", (0.5, 0.99))
            + [(
                f"sum(rate(stream_detector_inference_batch_size_sum{{{SEL}}}[{RATE}]))"
                " / "
                f"sum(rate(stream_detector_inference_batch_size_count{{{SEL}}}[{RATE}]))",
                "mean",
            )],
            (8, 24, 8, 8), unit="none",
        ),
        _timeseries(
            "Event latency",
            "From the input message's Kafka timestamp to the event's delivery confirmation.",
            _quantiles("stream_detector_event_latency_seconds", (0.5, 0.99)),
            (16, 24, 8, 8), unit="s",
        ),
    ]

    # --- Kafka and input ----------------------------------------------------------------
    row("Kafka and input", 32)
    panels += [
        _timeseries(
            "Consumer lag",
            "Messages behind the partition end, summed per topic (librdkafka statistics).",
            [(
                "sum by (topic) (max by (topic, partition) "
                f"(stream_detector_consumer_lag{{{SEL}}}))",
                "{{topic}}",
            )],
            (0, 33, 8, 8), unit="short",
        ),
        _timeseries(
            "Invalid messages/s by reason",
            "Input rejected as bad input (sent to the DLQ topic when one is set).",
            [(
                "sum by (reason) "
                f"(rate(stream_detector_invalid_messages_total{{{SEL}}}[{RATE}])) > 0",
                "{{reason}}",
            )],
            (8, 33, 8, 8), unit="ops",
        ),
        _timeseries(
            "Active series",
            "Series with a window buffer in memory, per replica.",
            [(f"sum by (instance) (stream_detector_active_series{{{SEL}}})", "{{instance}}")],
            (16, 33, 8, 8), unit="short",
        ),
    ]

    return Dashboard(
        title="stream-detector",
        uid=DASHBOARD_UID,
        description="Streaming anomaly detection: throughput, model scores, inference, Kafka.",
        tags=["stream-detector", "kafka", "anomaly-detection"],
        timezone="browser",
        refresh="30s",
        time=Time("now-3h", "now"),
        templating=_variables(),
        panels=panels,
    ).auto_panel_ids()


def render_dashboard() -> str:
    """Return the dashboard JSON text exactly as it is checked in."""
    data = json.loads(json.dumps(build_dashboard().to_json_data(), cls=DashboardEncoder))
    for var in data["templating"]["list"]:
        if var["includeAll"]:
            # Grafana's own encoding of a multi-value variable set to "All".
            var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(panel title, PromQL)`` for every target of every panel in ``dashboard``."""
    out: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            out.append((panel["title"], target["expr"]))
    return out


def expand_variables(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana variables in a panel query with what Grafana would send for "All"."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?(namespace|job|instance)\}?", ".*", expr)


# --- Grafana alert rules from the Prometheus rules ---------------------------------------

_VALUE = re.compile(r"\$value\b(?!s)")


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def _uid(alert: str) -> str:
    words = re.findall(r"[A-Z][a-z0-9]*", alert.removeprefix("StreamDetector"))
    return "stream-detector-" + "-".join(w.lower() for w in words)


def _expr_source() -> dict[str, str]:
    return {"type": "__expr__", "uid": "__expr__"}


def _grafana_rule(rule: dict[str, Any], datasource_uid: str) -> dict[str, Any]:
    annotations = {
        # Grafana's $value is a text of all query values; $values.A.Value is the number.
        k: _VALUE.sub("$values.A.Value", v)
        for k, v in rule.get("annotations", {}).items()
    }
    return {
        "uid": _uid(rule["alert"]),
        "title": rule["alert"],
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": 600, "to": 0},
                "datasourceUid": datasource_uid,
                "model": {
                    "refId": "A",
                    "datasource": {"type": "prometheus", "uid": datasource_uid},
                    "expr": rule["expr"].strip(),
                    "instant": True,
                    "range": False,
                },
            },
            {
                "refId": "B",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "datasource": _expr_source(),
                    "type": "math",
                    "expression": "is_number($A) || is_nan($A) || is_inf($A)",
                },
            },
            {
                "refId": "C",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "datasource": _expr_source(),
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                },
            },
        ],
        # As in Prometheus: no series returned means no alert.
        "noDataState": "OK",
        "execErrState": "Error",
        "for": rule.get("for", "0s"),
        "labels": dict(rule.get("labels", {})),
        "annotations": annotations,
        "isPaused": False,
    }


def render_alerting(datasource_uid: str = DEFAULT_DATASOURCE_UID) -> str:
    """Return the Grafana alert-rule provisioning file (YAML text)."""
    groups = yaml.safe_load(RULES_PATH.read_text())["groups"]
    doc = {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": group["name"],
                "folder": ALERT_FOLDER,
                "interval": group.get("interval", "1m"),
                "rules": [
                    _grafana_rule(r, datasource_uid) for r in group["rules"] if "alert" in r
                ],
            }
            for group in groups
        ],
    }
    buf = io.StringIO()
    buf.write(
        "# GENERATED by deploy/grafana/generate.py from deploy/prometheus/stream-detector.rules.yaml\n"
        f"# for a Prometheus data source with UID {datasource_uid!r}. Do not edit.\n"
    )
    yaml.dump(doc, buf, Dumper=_BlockDumper, sort_keys=False, width=100, allow_unicode=True)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a checked-in file is stale")
    parser.add_argument(
        "--datasource-uid",
        default=DEFAULT_DATASOURCE_UID,
        help="UID of the Prometheus data source the alert rules query (default: %(default)s)",
    )
    parser.add_argument("--alerting-out", type=Path, default=ALERTING_PATH)
    args = parser.parse_args(argv)

    outputs = {
        DASHBOARD_PATH: render_dashboard(),
        args.alerting_out: render_alerting(args.datasource_uid),
    }
    if args.check:
        stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
