"""Generate the stream-detector Grafana dashboard and Grafana alert rules.

Writes, next to this file:

- ``stream-detector.json``: the dashboard, built with grafana-foundation-sdk (Grafana 11.6
  schema). A ``datasource`` variable (any Prometheus data source) and
  ``namespace``/``job``/``instance`` filters make it work in any Grafana; the ``pod``
  variable (the detector's pods, from the ``pod`` label the Prometheus Operator puts on
  scraped series) selects the cAdvisor series of the pod panels. An annotation marks every
  model change (hot reload or promotion).
- ``provisioning/alerting/stream-detector.yaml``: Grafana unified-alerting file
  provisioning for the same alerts as ``deploy/prometheus/stream-detector.rules.yaml``,
  converted the way Grafana converts Prometheus rules itself: the PromQL expression as
  query ``A``, ``is_number($A) || is_nan($A) || is_inf($A)`` as ``B``, and ``B > 0`` as
  the condition ``C``, so any series the expression returns fires, as in Prometheus.

Usage (grafana-foundation-sdk is in the ``dev`` extra)::

    python deploy/grafana/generate.py            # rewrite both files
    python deploy/grafana/generate.py --check    # exit 1 if a checked-in file is stale
    python deploy/grafana/generate.py --datasource-uid UID --alerting-out FILE
        # alert provisioning for a Grafana whose Prometheus data source has another UID

Only metrics from ``stream_detector/metrics.py`` and cAdvisor's ``container_*`` may appear
in a query; ``tests/test_deploy_grafana.py`` checks that, and that every query parses.
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
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DASHBOARD_PATH = HERE / "stream-detector.json"
ALERTING_PATH = HERE / "provisioning" / "alerting" / "stream-detector.yaml"
RULES_PATH = HERE.parent / "prometheus" / "stream-detector.rules.yaml"

DASHBOARD_UID = "stream-detector"
# kube-prometheus-stack provisions its Prometheus data source with this UID.
DEFAULT_DATASOURCE_UID = "prometheus"
ALERT_FOLDER = "stream-detector"

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label filter every query of a detector metric carries; the variables default to "All" (.*).
SEL = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
# The same pods in cAdvisor's series: the container name is deploy/kubernetes/base's.
POD_SEL = 'namespace=~"$namespace", pod=~"$pod", container="detector"'
RATE = "$__rate_interval"

# The anomaly-ratio level drawn on the ratio panel: the default of the AnomalyRateHigh alert.
ANOMALY_RATIO_ALERT = 0.05
# A model whose creation time changed within this range was swapped in (reload, promotion).
PROMOTION_RANGE = "2m"


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
            .datasource(DATASOURCE))


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def _timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    span: int,
    unit: str = "",
) -> timeseries.Panel:
    panel = (
        timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
        .height(8).span(span).unit(unit or "none")
        .legend(cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM).show_legend(True))
    )
    for i, (expr, legend) in enumerate(targets):
        panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


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


def _per_job_rate(metric: str) -> list[tuple[str, str]]:
    return [(f"sum by (job) (rate({metric}{{{SEL}}}[{RATE}]))", "{{job}}")]


def _threshold_line() -> list[dm.DynamicConfigValue]:
    return [
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
        dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue(id_val="custom.lineWidth", value=2),
    ]


def _variables() -> list[Any]:
    all_selected = dm.VariableOption(selected=True, text=["All"], value=["$__all"])

    def query_var(name: str, label: str, query: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
            .include_all(True).all_value(".*").multi(True).current(all_selected)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)  # pods come and go
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )

    base = "stream_detector_messages_consumed_total"
    pods = (
        db.QueryVariable("pod").label("Pod")
        .query(f"label_values(stream_detector_build_info{{{SEL}}}, pod)")
        .datasource(DATASOURCE).include_all(True).multi(True).current(all_selected)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        # no all_value: "All" is the detector's pods, not every pod in the namespace
    )
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .current(dm.VariableOption(selected=True, text="default", value="default")),
        query_var("namespace", "Namespace", f"label_values({base}, namespace)"),
        query_var("job", "Job", f'label_values({base}{{namespace=~"$namespace"}}, job)'),
        query_var("instance", "Instance",
                  f'label_values({base}{{namespace=~"$namespace", job=~"$job"}}, instance)'),
        pods,
    ]


def _stat(title: str, expr: str, unit: str, description: str) -> stat.Panel:
    return (
        stat.Panel().title(title).description(description).datasource(DATASOURCE)
        .with_target(_query(expr, title, "A")).unit(unit).height(4).span(6)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .thresholds(_thresholds((None, "text")))
    )


def build_dashboard() -> db.Dashboard:
    """Return the dashboard builder (grafana-foundation-sdk)."""
    d = (
        db.Dashboard("stream-detector").uid(DASHBOARD_UID)
        .description("Streaming anomaly detection: throughput, model scores, inference, "
                     "Kafka, state, pods.")
        .tags(["stream-detector", "kafka", "anomaly-detection"])
        .timezone("browser").refresh("30s").time("now-3h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
        .annotation(
            db.AnnotationQuery().name("Model changes").datasource(DATASOURCE).enable(True)
            .icon_color("purple")
            .expr(f"changes(stream_detector_model_created_timestamp_seconds{{{SEL}}}"
                  f"[{PROMOTION_RANGE}]) > 0")
        )
    )

    d.with_row(db.Row("Overview"))
    for args in [
        ("Ready replicas", f"sum(stream_detector_ready{{{SEL}}})", "none",
         "Replicas reporting ready (model loaded, partitions assigned)."),
        ("Assigned partitions", f"sum(stream_detector_assigned_partitions{{{SEL}}})", "none",
         "Input partitions assigned over all replicas."),
        ("Anomaly threshold", f"max(stream_detector_anomaly_threshold{{{SEL}}})", "none",
         "Global threshold of the loaded model (per-key thresholds may differ)."),
        ("Model age", f"time() - min(stream_detector_model_created_timestamp_seconds{{{SEL}}})",
         "s", "Since the oldest loaded model was trained (alert: 30 days)."),
    ]:
        d.with_panel(_stat(*args))

    d.with_row(db.Row("Throughput"))
    d.with_panel(_timeseries("Input events/s", "Input messages consumed per second (valid or not).",
                             _per_job_rate("stream_detector_messages_consumed_total"), 6, "ops"))
    d.with_panel(_timeseries("Windows scored/s", "Windows pushed through the model per second.",
                             _per_job_rate("stream_detector_windows_scored_total"), 6, "ops"))
    d.with_panel(_timeseries("Anomalies/s", "Windows whose score exceeded the threshold, per second.",
                             _per_job_rate("stream_detector_anomalies_total"), 6, "ops"))
    d.with_panel(_timeseries(
        "Anomaly events published/s",
        "Events confirmed by the broker, by type (opened/closed incidents, or windows).",
        [(f"sum by (type) (rate(stream_detector_events_published_total{{{SEL}}}[{RATE}]))",
          "{{type}}")], 6, "ops"))

    d.with_row(db.Row("Model"))
    d.with_panel(
        _timeseries(
            "Reconstruction error vs threshold",
            "Quantiles of the reconstruction error of scored windows; the dashed line is the "
            "model's global anomaly threshold.",
            _quantiles("stream_detector_reconstruction_error", (0.5, 0.9, 0.99))
            + [(f"max(stream_detector_anomaly_threshold{{{SEL}}})", "threshold")],
            12,
        )
        .scale_distribution(cb.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10))
        .override_by_name("threshold", _threshold_line())
    )
    d.with_panel(
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
            12, "percentunit",
        )
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE))
        .thresholds(_thresholds((None, "green"), (ANOMALY_RATIO_ALERT, "red")))
    )
    d.with_panel(
        table.Panel().title("Model version per replica")
        .description("The model each replica serves now (kind, version, window).")
        .datasource(DATASOURCE).height(8).span(12)
        .with_target(
            _query(f"max by (instance, model, version, window) "
                   f"(stream_detector_model_info{{{SEL}}})", "", "A")
            .format(PromQueryFormat.TABLE).instant()
        )
        .with_transformation(dm.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {"Time": True, "Value": True}}))
    )
    d.with_panel(_timeseries(
        "Model reloads by result",
        "Hot-reload attempts per interval: loaded (taken into the shadow, or serving at once "
        "with shadow_windows 0), promoted (serves now) or refused (the candidate failed its "
        "checks or its promotion gate; the old one keeps serving).",
        [(f"sum by (result) (increase(stream_detector_model_reloads_total{{{SEL}}}[{RATE}]))",
          "{{result}}")], 12, "short"))

    d.with_row(db.Row("Inference"))
    d.with_panel(_timeseries("Inference latency", "Wall time of one batched model call.",
                             _quantiles("stream_detector_inference_seconds", (0.5, 0.9, 0.99)),
                             8, "s"))
    d.with_panel(_timeseries(
        "Inference batch size",
        "Windows per batched model call: quantiles and mean.",
        _quantiles("stream_detector_inference_batch_size", (0.5, 0.99))
        + [(
            f"sum(rate(stream_detector_inference_batch_size_sum{{{SEL}}}[{RATE}]))"
            " / "
            f"sum(rate(stream_detector_inference_batch_size_count{{{SEL}}}[{RATE}]))",
            "mean",
        )], 8, "none"))
    d.with_panel(_timeseries(
        "Event latency",
        "From the input message's Kafka timestamp to the event's delivery confirmation.",
        _quantiles("stream_detector_event_latency_seconds", (0.5, 0.99)), 8, "s"))

    d.with_row(db.Row("Kafka and input"))
    d.with_panel(_timeseries(
        "Consumer lag",
        "Messages behind the partition end, summed per topic (librdkafka statistics).",
        [("sum by (topic) (max by (topic, partition) "
          f"(stream_detector_consumer_lag{{{SEL}}}))", "{{topic}}")], 6, "short"))
    d.with_panel(_timeseries(
        "Invalid messages/s by reason",
        "Input rejected as bad input (sent to the DLQ topic when one is set).",
        [(f"sum by (reason) (rate(stream_detector_invalid_messages_total{{{SEL}}}[{RATE}])) > 0",
          "{{reason}}")], 6, "ops"))
    d.with_panel(_timeseries(
        "Active series", "Series with a window buffer in memory, per replica.",
        [(f"sum by (instance) (stream_detector_active_series{{{SEL}}})", "{{instance}}")],
        6, "short"))
    d.with_panel(_timeseries(
        "Series evicted/s by cause",
        "Series dropped from memory: max_series (over --max-series), idle, revoked "
        "(partition moved to another replica).",
        [(f"sum by (cause) (rate(stream_detector_series_evicted_total{{{SEL}}}[{RATE}])) > 0",
          "{{cause}}")], 6, "ops"))

    d.with_row(db.Row("State, checkpoints and delivery"))
    d.with_panel(
        _timeseries(
            "State ready",
            "1 when the state changelog is usable for every assigned partition (or state is "
            "off), per replica.",
            [(f"min by (instance) (stream_detector_state_ready{{{SEL}}})", "{{instance}}")],
            6, "none",
        ).min(0).max(1)
    )
    d.with_panel(_timeseries(
        "Checkpoint duration",
        "One checkpoint: flush events, write state, commit offsets.",
        _quantiles("stream_detector_checkpoint_seconds", (0.5, 0.99)), 6, "s"))
    d.with_panel(_timeseries(
        "State changelog written",
        "Bytes written to the state changelog per second (changed keys and tombstones).",
        _per_job_rate("stream_detector_state_bytes_written_total"), 6, "Bps"))
    d.with_panel(_timeseries(
        "Delivery failures by topic kind",
        "Messages the broker refused for good (events, dlq, state). After the first the "
        "replica commits nothing more, goes not-ready and exits.",
        [(f"sum by (topic_kind) "
          f"(increase(stream_detector_delivery_failures_total{{{SEL}}}[{RATE}])) > 0",
          "{{topic_kind}}")], 6, "short"))

    d.with_row(db.Row("Pods"))
    d.with_panel(_timeseries(
        "CPU per pod", "Cores used by the detector container (cAdvisor).",
        [(f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{POD_SEL}}}[{RATE}]))",
          "{{pod}}")], 8, "none"))
    d.with_panel(_timeseries(
        "Memory per pod", "Working set of the detector container, what the OOM killer goes by "
        "(cAdvisor).",
        [(f"sum by (pod) (container_memory_working_set_bytes{{{POD_SEL}}})", "{{pod}}")],
        8, "bytes"))
    d.with_panel(_timeseries(
        "CPU throttling per pod",
        "Share of CFS periods in which the container was throttled at its CPU limit "
        "(cAdvisor); high values slow inference and inflate event latency.",
        [(
            f"sum by (pod) (rate(container_cpu_cfs_throttled_periods_total{{{POD_SEL}}}[{RATE}]))"
            " / "
            f"sum by (pod) (rate(container_cpu_cfs_periods_total{{{POD_SEL}}}[{RATE}]))",
            "{{pod}}",
        )], 8, "percentunit"))
    return d


def render_dashboard() -> str:
    """Return the dashboard JSON text exactly as it is checked in."""
    dashboard = build_dashboard().build()
    # Panel ids in layout order (rows included), as Grafana numbers a new dashboard.
    for i, panel in enumerate(dashboard.panels or [], 1):
        panel.id_val = i
    data = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(panel title, PromQL)`` for every target of every panel in ``dashboard``."""
    out: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            out.append((panel["title"], target["expr"]))
    return out


def expand_variables(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana variables in a query with what Grafana would send for "All"."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?(namespace|job|instance|pod)\}?", ".*", expr)


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
