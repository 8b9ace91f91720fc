"""The kustomize tree renders with a real kustomize and every manifest validates offline.

Rendering: ``kubectl kustomize DIR`` (kubectl ships kustomize). Validation: built-in kinds
with ``kubernetes-validate`` (strict: unknown fields are errors), custom resources (KEDA,
prometheus-operator, Strimzi) with the JSON schemas vendored in ``deploy/schemas``.
Then the properties the deployment depends on are checked on the rendered output of every
overlay: probes, security context, drain time, Secret-sourced credentials, KEDA limits
against the topic's partitions, network policy, monitoring wiring; and against the Kafka
side of the same environment (``deploy/kubernetes/strimzi/<env>``): every topic the
detector's resolved configuration touches has its KafkaTopic and ACLs, and dev shares no
Kafka name with prod.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "deploy" / "schemas"
RULES = ROOT / "deploy" / "prometheus" / "stream-detector.rules.yaml"
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"
OVERLAYS = ("dev", "prod")
# The Kafka side of each overlay (its KafkaTopics and KafkaUser).
STRIMZI = {overlay: f"strimzi/{overlay}" for overlay in OVERLAYS}
# Variants an overlay can switch to with a component: name -> (overlay, component).
VARIANTS = {"prod+model-pvc": ("prod", "model-pvc"), "prod+model-s3": ("prod", "model-s3")}
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
CONFIG_MAP = "stream-detector-config"

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl not installed (CI installs it; kustomize rendering needs a real tool)",
)


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of a directory under deploy/kubernetes, or of a variant:
    an overlay plus a component, built the way a user adds ``components:`` to it."""
    if path in VARIANTS:
        return _render_variant(*VARIANTS[path])
    return _kustomize(K8S / path)


def _kustomize(path: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _render_variant(overlay: str, component: str) -> tuple[dict[str, Any], ...]:
    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(K8S, tmp)  # kustomize wants relative paths
        namespace = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml")
                                   .read_text())["namespace"]
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": namespace,
            "resources": [f"{rel}/overlays/{overlay}"],
            "components": [f"{rel}/components/{component}"],
        }))
        return _kustomize(Path(tmp))


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


def named(docs: tuple[dict[str, Any], ...], kind: str, prefix: str) -> dict[str, Any]:
    """The one ``kind`` whose name is ``prefix`` or ``prefix-<hash>`` (generated names)."""
    found = [d for d in docs if d["kind"] == kind
             and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {prefix}, found {len(found)}"
    return found[0]


def config_of(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The mounted config.yaml as written (see ``effective_config`` for what `run` uses)."""
    return yaml.safe_load(named(docs, "ConfigMap", CONFIG_MAP)["data"]["config.yaml"])


def container_env(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The detector container's environment: envFrom ConfigMaps, then env (which wins).
    Values from Secrets are ``<NAME>`` placeholders; no Secret is rendered from git."""
    c = container(docs)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert "configMapRef" in source, f"unexpected envFrom {source}"
        cm = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == source["configMapRef"]["name"])
        env.update({source.get("prefix", "") + k: v for k, v in cm["data"].items()})
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else f"<{e['name']}>"
    return env


@cache
def _effective_config(path: str) -> dict[str, Any]:
    from stream_detector.cli import build_parser
    from stream_detector.config import COMMAND_OPTS, resolve

    docs = render(path)
    c = container(docs)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(named(docs, "ConfigMap", CONFIG_MAP)["data"]["config.yaml"])
        args = [str(config) if a.endswith("/config.yaml") else a for a in c["args"]]
        parsed = build_parser().parse_args(args)
        return resolve(parsed.command, COMMAND_OPTS[parsed.command], parsed,
                       environ=container_env(docs))


def effective_config(path: str) -> dict[str, Any]:
    """What `run` in the pod resolves: the container's args and the mounted config.yaml
    through the service's own option parser, with the container's environment."""
    return copy.deepcopy(_effective_config(path))


def kafka_names(path: str) -> dict[str, str | None]:
    """Every Kafka name the detector of ``path`` uses, by role, as the service derives them
    (the state changelog's name included)."""
    from stream_detector.service import ServiceConfig

    service = ServiceConfig.from_options(effective_config(path))
    return {
        "group": service.group_id,
        "input": service.input_topic,
        "output": service.output_topic,
        "dlq": service.dlq_topic,
        "state": service.changelog_topic,
        "feedback": service.feedback_topic,
    }


def container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def kafka_topics(strimzi: str) -> dict[str, dict[str, Any]]:
    """KafkaTopics by Kafka topic name (``spec.topicName``, else the resource name)."""
    return {
        d["spec"].get("topicName") or d["metadata"]["name"]: d
        for d in render(strimzi)
        if d["kind"] == "KafkaTopic"
    }


def input_topic_partitions(overlay: str, topic: str) -> int:
    topics = kafka_topics(STRIMZI[overlay])
    assert topic in topics, f"no KafkaTopic for input topic {topic!r} in {STRIMZI[overlay]}"
    return topics[topic]["spec"]["partitions"]


# --- rendering and schema validation ---------------------------------------------------


@pytest.mark.parametrize(
    "path", ["base", *(f"overlays/{o}" for o in OVERLAYS), *STRIMZI.values(), *VARIANTS]
)
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
    topic = copy.deepcopy(next(d for d in render("strimzi/prod") if d["kind"] == "KafkaTopic"))
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
    cm = named(docs, "ConfigMap", CONFIG_MAP)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The hashed name the generator gave the ConfigMap is what the pod mounts.
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert c["args"][:1] == ["run"]
    assert c["args"][c["args"].index("--config") + 1] == f"{mount['mountPath']}/config.yaml"
    config = effective_config(f"overlays/{overlay}")
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
    path.write_text(named(docs, "ConfigMap", CONFIG_MAP)["data"]["config.yaml"])
    args = [str(path) if a.endswith("/config.yaml") else a for a in c["args"]]
    parsed = build_parser().parse_args(args)
    cfg = resolve(parsed.command, COMMAND_OPTS[parsed.command], parsed,
                  environ=container_env(docs))

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
    config = effective_config(f"overlays/{overlay}")
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

    partitions = input_topic_partitions(overlay, config["input_topic"])
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
    # The same groups, except that the runbook base is the one kustomize is configured with.
    expected = yaml.safe_load(RULES.read_text())["groups"]
    for group in expected:
        for r in group["rules"]:
            if "runbook_url" in r.get("annotations", {}):
                anchor = r["annotations"]["runbook_url"].partition("#")[2]
                r["annotations"]["runbook_url"] = f"{runbook_base()}#{anchor}"
    assert rule["spec"]["groups"] == expected


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


# --- the Kafka side: topics and ACLs for every name the detector uses ----------------------

CONSUMER_SRC = ROOT / "stream_detector" / "kafka" / "properties.py"
STATE_SRC = ROOT / "stream_detector" / "state.py"

# What the detector does with each of its names.
NEEDED = {
    "input": ("topic", {"Describe", "Read"}),
    "group": ("group", {"Describe", "Read"}),
    "output": ("topic", {"Describe", "Write"}),
    "dlq": ("topic", {"Describe", "Write"}),
    # Read back on assignment, written at checkpoints; Create because the detector asks
    # for the topic (CreateTopics, "already exists") on every assignment and Kafka answers
    # that call with an authorization error, not "exists", without Create.
    "state": ("topic", {"Describe", "Read", "Write", "Create"}),
    # operators' labels: every replica reads the whole topic (assigned, no commits)
    "feedback": ("topic", {"Describe", "Read"}),
}


# What KEDA's kafka scaler does: it reads the group's committed offsets (OffsetFetch) and
# the topic's partitions and end offsets (Metadata, ListOffsets), which Describe covers.
KEDA_NEEDED = {
    "input": ("topic", {"Describe"}),
    "group": ("group", {"Describe"}),
}


def kafka_user(overlay: str, component: str = "detector") -> dict[str, Any]:
    """The environment's KafkaUser of the detector, or of KEDA (``autoscaler``)."""
    (user,) = [d for d in render(STRIMZI[overlay]) if d["kind"] == "KafkaUser"
               and d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
               == component]
    return user


def allows(user: dict[str, Any], rtype: str, name: str, operation: str) -> bool:
    """Whether an allow ACL of ``user`` (literal, prefix or ``*``) covers the operation."""
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        if res["type"] != rtype or acl.get("type", "allow") != "allow":
            continue
        pattern = res.get("patternType", "literal")
        matches = (res.get("name") == "*" or
                   (pattern == "literal" and res.get("name") == name) or
                   (pattern == "prefix" and name.startswith(res["name"])))
        ops = set(acl.get("operations") or [acl.get("operation")])
        if matches and (operation in ops or "All" in ops):
            return True
    return False


def restore_group_prefix(src: Path | None = None) -> str:
    """The one-off consumer group id ``<prefix><uuid>`` of the state restorer (state.py),
    or of the module ``src`` (the feedback reader)."""
    src = src or STATE_SRC
    found = set(re.findall(r'"group\.id":\s*f"([^"{]*)\{uuid', src.read_text()))
    assert len(found) == 1, f"cannot find the one-off group id in {src}: {found}"
    return found.pop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kafka_name_has_its_topic_and_acls(overlay):
    """Every topic in the rendered (resolved) configuration has a KafkaTopic in the
    environment's strimzi directory and ACLs on the environment's KafkaUser that allow what
    the detector does with it."""
    names = kafka_names(f"overlays/{overlay}")
    assert names["state"], "the shipped config must keep state recovery on (--state changelog)"
    topics = kafka_topics(STRIMZI[overlay])
    user = kafka_user(overlay)
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert user["spec"]["authorization"]["type"] == "simple"
    problems = []
    for role, (rtype, operations) in NEEDED.items():
        name = names[role]
        if name is None:
            continue
        if rtype == "topic" and name not in topics:
            problems.append(f"{role} topic {name!r}: no KafkaTopic in {STRIMZI[overlay]}")
        for op in sorted(operations):
            if not allows(user, rtype, name, op):
                problems.append(f"{role} {rtype} {name!r}: {user['metadata']['name']} lacks {op}")
    restore_group = restore_group_prefix() + "0" * 32
    if not allows(user, "group", restore_group, "Describe"):
        problems.append(f"state restore group {restore_group!r}: no Describe")
    assert names["feedback"], "the shipped config reads operators' feedback"
    feedback_group = restore_group_prefix(STATE_SRC.parent / "feedback_topic.py") + "0" * 32
    if not allows(user, "group", feedback_group, "Describe"):
        problems.append(f"feedback reader group {feedback_group!r}: no Describe")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_state_topic_is_compacted_and_partitioned_like_the_input(overlay):
    names = kafka_names(f"overlays/{overlay}")
    topics = kafka_topics(STRIMZI[overlay])
    state, source = topics[names["state"]]["spec"], topics[names["input"]]["spec"]
    assert state["config"]["cleanup.policy"] == "compact"
    # State partition N holds input partition N's keys; with fewer the detector would try
    # to add partitions, which its user may not (no Alter) and Strimzi would fight.
    assert state["partitions"] == source["partitions"]
    assert not allows(kafka_user(overlay), "topic", names["state"], "Alter")
    for name in names.values():
        if name and name in topics:
            spec = topics[name]["spec"]
            assert int(spec["config"]["min.insync.replicas"]) < spec["replicas"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_state_topic_keeps_its_dirty_tail_small(overlay):
    """A restore reads the changelog's whole uncompacted tail (issue #26, item 4): the
    active segment is never compacted, so it must roll well before Kafka's 1 GiB / 7 days,
    the cleaner must run before half the log is dirty, and within a bounded lag."""
    names = kafka_names(f"overlays/{overlay}")
    config = kafka_topics(STRIMZI[overlay])[names["state"]]["spec"]["config"]
    assert int(config["segment.bytes"]) <= 128 * 2**20
    assert int(config["segment.ms"]) <= 24 * 3600 * 1000
    assert float(config["min.cleanable.dirty.ratio"]) <= 0.25
    assert int(config["max.compaction.lag.ms"]) <= 24 * 3600 * 1000
    assert "delete" not in config["cleanup.policy"], "never deleted by time"


def test_dev_shares_no_kafka_name_with_prod():
    """Dev pods must never join prod's group or write into prod's topics."""
    dev, prod = kafka_names("overlays/dev"), kafka_names("overlays/prod")
    dev_names = {n for n in dev.values() if n}
    prod_names = {n for n in prod.values() if n}
    assert not dev_names & prod_names, f"shared: {dev_names & prod_names}"
    assert dev["group"] != prod["group"] and dev["output"] != prod["output"]
    # Both environments' Kafka resources live in the Kafka cluster's namespace: no
    # resource may be in both (one would overwrite the other).
    dev_res = {(d["kind"], d["metadata"]["name"]) for d in render(STRIMZI["dev"])}
    prod_res = {(d["kind"], d["metadata"]["name"]) for d in render(STRIMZI["prod"])}
    assert not dev_res & prod_res, f"in both: {dev_res & prod_res}"
    # Each user can touch its own environment only.
    for user, other in ((kafka_user("dev"), prod), (kafka_user("prod"), dev),
                        (kafka_user("dev", "autoscaler"), prod),
                        (kafka_user("prod", "autoscaler"), dev)):
        who = user["metadata"]["name"]
        for role, (rtype, operations) in NEEDED.items():
            if other[role] is None:
                continue
            granted = [op for op in operations if allows(user, rtype, other[role], op)]
            assert not granted, f"{who} may {granted} {rtype} {other[role]!r} of the other env"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_has_its_own_kafka_user_with_describe_only(overlay):
    """Issue #26 item 8: KEDA held the detector's SCRAM user (Write, Create). Its
    TriggerAuthentication takes its credentials from a Secret of its own, which
    deploy/README fills from the environment's KEDA KafkaUser; that user may Describe the
    input topic and the group, and do nothing else."""
    docs = render(f"overlays/{overlay}")
    auth = one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    keda_secrets = {r["name"] for r in auth if r["parameter"] in ("username", "password")}
    assert len(keda_secrets) == 1, keda_secrets
    (keda_secret,) = keda_secrets
    detector_secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container(docs)["env"]
                        if e["name"].startswith("STREAM_DETECTOR_KAFKA_SASL_")}
    assert keda_secret not in detector_secrets, "KEDA must not hold the detector's user"

    user, detector = kafka_user(overlay, "autoscaler"), kafka_user(overlay)
    assert user["metadata"]["name"] != detector["metadata"]["name"]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert user["spec"]["authorization"]["type"] == "simple"
    names = kafka_names(f"overlays/{overlay}")
    problems = []
    for role, (rtype, operations) in KEDA_NEEDED.items():
        for op in sorted(operations):
            if not allows(user, rtype, names[role], op):
                problems.append(f"KEDA lacks {op} on {rtype} {names[role]!r}")
    allowed = {(rtype, names[role]) for role, (rtype, _) in KEDA_NEEDED.items()}
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        ops = set(acl.get("operations") or [acl.get("operation")])
        if acl.get("type", "allow") != "allow":
            continue
        if ops != {"Describe"}:
            problems.append(f"KEDA may {sorted(ops - {'Describe'})} on {res}")
        if (res["type"], res.get("name")) not in allowed or \
                res.get("patternType", "literal") != "literal":
            problems.append(f"KEDA has an ACL on {res}, which it does not read")
    assert not problems, "\n".join(problems)

    # deploy/README creates KEDA's Secret from that user's Strimzi Secret
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert f"create secret generic {keda_secret}" in readme
    assert f"kafkauser/{user['metadata']['name']} " in readme


def _consumer_offset_reset(config: dict[str, Any]) -> str:
    """The detector's auto.offset.reset: a `kafka:` property if set, else the consumer's
    default in kafka/properties.py, in KEDA's words."""
    value = config["kafka"].get("auto.offset.reset")
    if value is None:
        found = set(re.findall(r'"auto\.offset\.reset":\s*"(\w+)"', CONSUMER_SRC.read_text()))
        assert len(found) == 1, f"cannot tell the consumer's auto.offset.reset: {found}"
        value = found.pop()
    aliases = {"smallest": "earliest", "beginning": "earliest",
               "largest": "latest", "end": "latest"}
    return aliases.get(value, value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_offset_reset_policy_matches_the_consumer(overlay):
    """A group without committed offsets: the consumer starts at `earliest`, so its lag
    is the whole backlog; KEDA must count it the same way or it does not scale for it."""
    (trigger,) = one(render(f"overlays/{overlay}"), "ScaledObject")["spec"]["triggers"]
    config = effective_config(f"overlays/{overlay}")
    assert trigger["metadata"]["offsetResetPolicy"] == _consumer_offset_reset(config)


# --- where the model comes from --------------------------------------------------------------


def _tag(image: str) -> str:
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    return digest or (last.split(":", 1)[1] if ":" in last else "")


@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in OVERLAYS), *VARIANTS])
def test_model_path_is_provided_by_a_volume(path):
    """`model:` names a directory the pod is given (a volume filled by an initContainer
    from a model image, or a claim), not one the code image would have to contain: the
    image and the model source cannot disagree and crash-loop the pods."""
    docs = render(path)
    model = effective_config(path)["model"]
    if "://" in model:  # an object-store URL: nothing to mount
        return
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = [m for m in container(docs)["volumeMounts"]
              if model == m["mountPath"] or model.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path}: model {model} is on no volume: it would have to be in the image"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    assert mount.get("readOnly") is True, "the detector must not be able to change its model"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim
                   for d in docs), f"claim {claim} is not rendered"
        assert not pod.get("initContainers")
        return
    assert "emptyDir" in volume, f"unexpected model volume {volume}"
    fillers = [c for c in pod.get("initContainers", [])
               if any(m["name"] == mount["name"] and not m.get("readOnly")
                      for m in c.get("volumeMounts", []))]
    assert len(fillers) == 1, "an emptyDir model volume needs the initContainer that fills it"
    image = fillers[0]["image"]
    assert "/" in image and _tag(image), f"model image {image!r} is not set by the overlay"
    assert fillers[0]["volumeMounts"][0]["mountPath"] == mount["mountPath"]


def test_model_s3_component_reads_the_model_from_the_store_with_secret_credentials():
    """components/model-s3: `--model` is an S3 URL the service accepts, the credentials
    come from a Secret, nothing is left of the model image, and egress reaches the store."""
    from stream_detector.model_store import S3Source, open_source

    path = "prod+model-s3"
    docs = render(path)
    model = effective_config(path)["model"]
    assert isinstance(open_source(model), S3Source), model
    env = {e["name"]: e for e in container(docs)["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "stream-detector-model-store", name
    assert env["AWS_ENDPOINT_URL_S3"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any(d["kind"] == "Secret" for d in docs), "no Secret may be rendered from git"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    assert "model" not in {v["name"] for v in pod["volumes"]}
    assert "model" not in {m["name"] for m in container(docs)["volumeMounts"]}
    assert effective_config(path)["model_poll_s"] > 0, "new versions must be picked up"
    # everything else is the prod overlay's
    prod = {(d["kind"], d["metadata"]["name"]) for d in render("overlays/prod")}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == prod


def _documented_store_endpoint() -> str:
    """The MinIO endpoint deploy/README.md tells the operator to put in the Secret."""
    found = set(re.findall(r"--from-literal=endpoint=(\S+)", (ROOT / "deploy" / "README.md")
                           .read_text()))
    assert len(found) == 1, f"one documented store endpoint expected: {found}"
    return found.pop()


def test_model_s3_egress_reaches_the_documented_store_and_nothing_else():
    """Issue #26 item 8: the component's egress was TCP 443 to any address (a way out for
    the store's credentials) and did not reach the documented MinIO endpoint. Every rule it
    adds names its destination (no rule without `to` or `ports`, no open CIDR), and the
    documented endpoint's namespace, pods and port are allowed."""
    import ipaddress

    docs = render("prod+model-s3")
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    base = one(render("overlays/prod"), "NetworkPolicy")["spec"]["egress"]
    added = [r for r in egress if r not in base]
    assert added, "the component must open egress to the store"
    for rule in added:
        assert rule.get("to"), f"egress to any address: {rule}"
        assert rule.get("ports"), f"egress on any port: {rule}"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert net.prefixlen >= (16 if net.version == 4 else 48), f"open CIDR {net}"
            else:
                assert peer.get("podSelector", {}).get("matchLabels"), \
                    f"every pod of a namespace (or of every namespace): {peer}"

    endpoint = _documented_store_endpoint()
    assert endpoint in (K8S / "components" / "model-s3" / "kustomization.yaml").read_text()
    url = urlparse(endpoint)
    assert url.port and url.hostname and url.hostname.endswith(".svc"), endpoint
    namespace = url.hostname.split(".")[1]  # <service>.<namespace>.svc
    reaches = [r for r in added
               if {"protocol": "TCP", "port": url.port} in r["ports"]
               and any(p.get("namespaceSelector", {}).get("matchLabels")
                       == {"kubernetes.io/metadata.name": namespace} for p in r["to"])]
    assert reaches, f"no egress to the documented endpoint {endpoint}"


def test_prod_images_are_immutable_tags():
    pod = one(render("overlays/prod"), "Deployment")["spec"]["template"]["spec"]
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        tag = _tag(c["image"])
        assert tag and tag not in {"latest", "dev", "main"}, f"{c['name']}: {c['image']}"
        assert c["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in OVERLAYS), *VARIANTS])
def test_init_containers_are_locked_down(path):
    pod = one(render(path), "Deployment")["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), kind


# --- monitoring wiring: release label, consumergroup label, runbook URLs ---------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kube_prometheus_stack_selects_the_monitor_and_rules(overlay):
    docs = render(f"overlays/{overlay}")
    releases = {one(docs, kind)["metadata"]["labels"].get("release")
                for kind in ("ServiceMonitor", "PrometheusRule")}
    assert len(releases) == 1 and None not in releases, releases


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_detector_series_carry_their_consumer_group(overlay):
    """The Kafka-side alerts join kafka_consumergroup_lag{consumergroup} with the
    detector's own series on this label."""
    group = effective_config(f"overlays/{overlay}")["group_id"]
    for endpoint in one(render(f"overlays/{overlay}"), "ServiceMonitor")["spec"]["endpoints"]:
        (relabel,) = [r for r in endpoint.get("relabelings", [])
                      if r.get("targetLabel") == "consumergroup"]
        assert relabel.get("action", "replace") == "replace" and "sourceLabels" not in relabel
        assert relabel["replacement"] == group


def runbook_base() -> str:
    """The one configured runbook location (base/kustomization.yaml)."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (gen,) = [g for g in kustomization["configMapGenerator"]
              if g["name"] == "stream-detector-runbook"]
    (literal,) = [v for v in gen["literals"] if v.startswith("base=")]
    return literal.partition("=")[2]


def _runbook_anchors() -> set[str]:
    return {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    }


@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_runbook_urls_are_absolute_and_from_one_base(path):
    base = runbook_base()
    parsed = urlparse(base)
    assert parsed.scheme == "https" and parsed.netloc and not parsed.fragment, base
    anchors = _runbook_anchors()
    rule = one(render(path), "PrometheusRule")
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r):
        url = r["annotations"]["runbook_url"]
        prefix, _, anchor = url.partition("#")
        assert prefix == base, f"{r['alert']}: {url}"
        assert anchor in anchors, f"{r['alert']}: no section #{anchor} in deploy/RUNBOOK.md"
    # The plain rules file (Prometheus and Grafana without Kubernetes) has the same default.
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for r in group["rules"]:
            assert r["annotations"]["runbook_url"].partition("#")[0] == base, r["alert"]


def test_runbook_base_is_changed_in_one_place(tmp_path):
    """Changing the one literal rewrites every rendered runbook_url."""
    work = tmp_path / "kubernetes"
    shutil.copytree(K8S, work)
    kustomization = work / "base" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count(runbook_base()) == 1
    kustomization.write_text(text.replace(runbook_base(), "https://wiki.example.org/sd"))
    rule = one(_kustomize(work / "overlays" / "prod"), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith("https://wiki.example.org/sd#") for u in urls), urls
