"""The kustomize tree renders with a real kustomize and every manifest validates offline.

Rendering: ``kubectl kustomize DIR`` (kubectl ships kustomize). Validation: built-in kinds
with ``kubernetes-validate`` (strict: unknown fields are errors), custom resources (KEDA,
prometheus-operator, Strimzi) with the JSON schemas vendored in ``deploy/schemas``.
Then the properties the deployment depends on are checked on the rendered output of every
overlay: probes, security context, drain time, Secret-sourced credentials, KEDA limits
against the topic's partitions, network policy, monitoring wiring.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "deploy" / "schemas"
RULES = ROOT / "deploy" / "prometheus" / "stream-detector.rules.yaml"
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes minor we claim to support, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

APP_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ScaledObject",
    "TriggerAuthentication",
    "ServiceMonitor",
    "PrometheusRule",
}

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl not installed (CI installs it; kustomize rendering needs a real tool)",
)


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{kind.lower()}.json"
    if not group or not path.exists():
        return None
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validate(doc: dict[str, Any]) -> list[str]:
    """Return validation errors of one manifest (empty when valid)."""
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    if validator is not None:
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"k8s {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"no schema for {doc['apiVersion']} {doc['kind']}: {exc.message}")
    return errors


def config_of(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    cm = one(docs, "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def input_topic_partitions(topic: str) -> int:
    topics = {
        d["metadata"].get("name"): d["spec"]["partitions"]
        for d in render("strimzi")
        if d["kind"] == "KafkaTopic"
    }
    assert topic in topics, f"no KafkaTopic for input topic {topic!r} in deploy/kubernetes/strimzi"
    return topics[topic]


# --- rendering and schema validation ---------------------------------------------------


@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS), "strimzi"])
def test_every_rendered_manifest_validates(path):
    docs = render(path)
    assert docs
    problems = {
        f"{d['kind']}/{d['metadata'].get('name')}": errs for d in docs if (errs := validate(d))
    }
    assert not problems, json.dumps(problems, indent=2)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_every_component(overlay):
    kinds = {d["kind"] for d in render(f"overlays/{overlay}")}
    assert APP_KINDS <= kinds, f"missing: {APP_KINDS - kinds}"
    assert kinds <= APP_KINDS, f"unexpected: {kinds - APP_KINDS}"
    namespaces = {d["metadata"].get("namespace") for d in render(f"overlays/{overlay}")}
    assert len(namespaces) == 1 and None not in namespaces


def test_schemas_are_strict():
    """A misspelt field or a wrong type must fail, or the validation proves little."""
    docs = render("overlays/prod")
    scaled = copy.deepcopy(one(docs, "ScaledObject"))
    scaled["spec"]["maxReplicaCont"] = 3
    assert validate(scaled)
    rule = copy.deepcopy(one(docs, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    assert validate(rule)
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = 30
    assert validate(monitor)
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert validate(deployment)
    topic = copy.deepcopy(next(d for d in render("strimzi") if d["kind"] == "KafkaTopic"))
    topic["spec"]["partitions"] = "12"
    assert validate(topic)


# --- the Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_and_security(overlay):
    docs = render(f"overlays/{overlay}")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port["metrics"] == config_of(docs)["metrics_port"]

    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    # With a read-only root, /tmp must be a volume.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/tmp" in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_exceeds_drain_time(overlay):
    docs = render(f"overlays/{overlay}")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = config_of(docs).get("drain_timeout_s", 10)  # the service's default is 10 s
    # Drain must finish, then the process exit (TensorFlow teardown) needs a margin.
    assert pod["terminationGracePeriodSeconds"] >= drain + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_is_mounted_and_used(overlay):
    docs = render(f"overlays/{overlay}")
    c = container(docs)
    cm = one(docs, "ConfigMap")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The hashed name the generator gave the ConfigMap is what the pod mounts.
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert c["args"][:1] == ["run"]
    assert c["args"][c["args"].index("--config") + 1] == f"{mount['mountPath']}/config.yaml"
    config = config_of(docs)
    for key in ("bootstrap_servers", "input_topic", "output_topic", "group_id", "model"):
        assert config.get(key), key
    # The CA file the Kafka client reads comes from the mounted Secret.
    ca_mount = next(m for m in c["volumeMounts"] if m["name"] == "kafka-ca")
    assert config["kafka"]["ssl.ca.location"].startswith(ca_mount["mountPath"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_accepts_the_rendered_command_and_config(overlay, tmp_path):
    """The container's args and the ConfigMap go through the service's own option parser
    (unknown keys and bad values are errors there), with the Secret-sourced env set."""
    from stream_detector.cli import build_parser
    from stream_detector.config import COMMAND_OPTS, resolve

    docs = render(f"overlays/{overlay}")
    c = container(docs)
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
    args = [str(path) if a.endswith("/config.yaml") else a for a in c["args"]]
    parsed = build_parser().parse_args(args)
    env = {e["name"]: f"<{e['name']}>" for e in c["env"]}
    cfg = resolve(parsed.command, COMMAND_OPTS[parsed.command], parsed, environ=env)

    assert cfg["kafka"]["sasl.username"] == "<STREAM_DETECTOR_KAFKA_SASL_USERNAME>"
    assert cfg["kafka"]["sasl.password"] == "<STREAM_DETECTOR_KAFKA_SASL_PASSWORD>"
    assert cfg["metrics_port"] == next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert cfg["metrics_host"] == "0.0.0.0"  # reachable by the kubelet and Prometheus
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= cfg["drain_timeout_s"] + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sasl_credentials_come_from_a_secret(overlay):
    docs = render(f"overlays/{overlay}")
    env = {e["name"]: e for e in container(docs)["env"]}
    for name in ("STREAM_DETECTOR_KAFKA_SASL_USERNAME", "STREAM_DETECTOR_KAFKA_SASL_PASSWORD"):
        assert "value" not in env[name], f"{name} is a literal"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "stream-detector-kafka"
    config = config_of(docs)
    assert config["kafka"]["security.protocol"] == "SASL_SSL"
    assert config["kafka"]["sasl.mechanism"].startswith("SCRAM-")
    assert not any("password" in k or "username" in k for k in config["kafka"])
    assert not any(d["kind"] == "Secret" for d in docs), "no Secret may be rendered from git"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_replicas_field_keda_owns_scaling(overlay):
    deployment = one(render(f"overlays/{overlay}"), "Deployment")
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


# --- autoscaling --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_the_detectors_consumer_lag(overlay):
    docs = render(f"overlays/{overlay}")
    scaled = one(docs, "ScaledObject")
    config = config_of(docs)
    deployment = one(docs, "Deployment")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == config["bootstrap_servers"]
    assert meta["consumerGroup"] == config["group_id"]
    assert meta["topic"] == config["input_topic"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert {"username", "password", "ca"} <= set(params)

    partitions = input_topic_partitions(config["input_topic"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions


# --- network policy -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_only_prometheus_in_and_kafka_out(overlay):
    docs = render(f"overlays/{overlay}")
    policy = one(docs, "NetworkPolicy")["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]

    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (source,) = ingress["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}

    kafka_port = int(config_of(docs)["bootstrap_servers"].rsplit(":", 1)[1])
    egress_ports = sorted(
        (p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]
    )
    assert egress_ports == sorted([("TCP", kafka_port), ("UDP", 53), ("TCP", 53)])
    kafka_rule = next(r for r in policy["egress"] if r["ports"][0]["port"] == kafka_port)
    assert "strimzi.io/cluster" in kafka_rule["to"][0]["podSelector"]["matchLabels"]
    for rule in policy["egress"]:
        assert all("ipBlock" not in peer for peer in rule["to"]), "no open CIDR egress"


# --- service, monitoring, disruption budget ------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_the_metrics_port(overlay):
    docs = render(f"overlays/{overlay}")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"

    monitor = one(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The alerts select job="stream-detector": the job label comes from this Service label.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "stream-detector"

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["maxUnavailable"] == 1


def test_prometheus_rule_manifest_is_generated_from_the_rules_file():
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "prometheus" / "generate.py"), "--check"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    rule = one(render("base"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def _anomaly_rule(overlay: str) -> dict[str, Any]:
    rule = one(render(f"overlays/{overlay}"), "PrometheusRule")
    return next(
        r for g in rule["spec"]["groups"] for r in g["rules"]
        if r.get("alert") == "StreamDetectorAnomalyRateHigh"
    )


@pytest.mark.parametrize(("overlay", "level"), [("dev", "0.2"), ("prod", "0.05")])
def test_anomaly_rate_level_is_set_per_overlay(overlay, level):
    expr = _anomaly_rule(overlay)["expr"]
    assert f") > {level}\n" in expr
    # Only the level differs from the base rule.
    base = next(
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
        if r.get("alert") == "StreamDetectorAnomalyRateHigh"
    )["expr"]
    assert expr.replace(f") > {level}\n", ") > X\n") == base.replace(") > 0.05\n", ") > X\n")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_rules_pass_promtool(overlay, tmp_path):
    rule = one(render(f"overlays/{overlay}"), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_strimzi_user_may_do_what_the_detector_does():
    docs = render("strimzi")
    config = config_of(render("overlays/prod"))
    (user,) = [d for d in docs if d["kind"] == "KafkaUser"]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    acls = {
        (a["resource"]["type"], a["resource"]["name"]): set(a["operations"])
        for a in user["spec"]["authorization"]["acls"]
    }
    assert {"Read", "Describe"} <= acls[("topic", config["input_topic"])]
    assert {"Read"} <= acls[("group", config["group_id"])]
    assert {"Write"} <= acls[("topic", config["output_topic"])]
    assert {"Write"} <= acls[("topic", config["dlq_topic"])]
