"""The Helm chart rendered by real helm: lint, what the pods get, and values it refuses."""

from __future__ import annotations

import json
import re

import pytest

from stream.settings import Settings

from .chart import CHART, REPO_ROOT, VARIANTS, only, variant_args, worker_env
from .conftest import HelmRun, Render

# The worker settings the chart sets itself from structured values (never in `env`).
CHART_OWNED = {
    "TRENDSTREAM_KAFKA_BOOTSTRAP", "TRENDSTREAM_APP_ID", "TRENDSTREAM_TOPIC_PREFIX",
    "TRENDSTREAM_TOPIC_REVIEWS", "TRENDSTREAM_PARTITIONS", "TRENDSTREAM_SECURITY_PROTOCOL",
    "TRENDSTREAM_SASL_MECHANISM", "TRENDSTREAM_SASL_USERNAME", "TRENDSTREAM_SASL_PASSWORD",
    "TRENDSTREAM_SASL_PASSWORD_FILE", "TRENDSTREAM_SSL_CAFILE", "TRENDSTREAM_SSL_CERTFILE",
    "TRENDSTREAM_SSL_KEYFILE", "TRENDSTREAM_MODEL_DIR", "TRENDSTREAM_EXECUTION_PROVIDER",
    "TRENDSTREAM_WEB_HOST", "TRENDSTREAM_WEB_PORT", "TRENDSTREAM_GROUP_INSTANCE_ID",
    "TRENDSTREAM_WEB_CANONICAL_URL",
}
TESTING_ONLY = {"TRENDSTREAM_CHAOS_SCORE_DELAY_S", "TRENDSTREAM_CHAOS_SLOW_BATCHES"}


def pod_spec(docs: list[dict]) -> dict:
    """The worker pod's spec."""
    workload = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))
    return workload["spec"]["template"]["spec"]


def worker(docs: list[dict]) -> dict:
    """The worker container."""
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "worker")


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(helm_run: HelmRun, variant: str) -> None:
    """`helm lint --strict` passes for the default values and every ci/ variant."""
    result = helm_run("lint", "--strict", str(CHART), *variant_args(variant))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_render_kinds(render: Render) -> None:
    """Default values make the core objects only: no custom resource needs an operator."""
    kinds = sorted(d["kind"] for d in render())
    assert kinds == ["Deployment", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]


def test_helm_test_pod_waits_for_readyz(render: Render) -> None:
    """`helm test` runs a hook pod that polls the Service's /readyz until it answers 200."""
    docs = render()
    pod, service = only(docs, "Pod"), only(docs, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f'url="http://{service["metadata"]["name"]}:6066/readyz"' in script
    assert "wget -q -T 5 -O - \"$url\"" in script
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_worker_pod_probes_and_safety(render: Render) -> None:
    """Probes hit the worker's pages; service links off; non-root, read-only root, /tmp."""
    docs = render()
    spec, c = pod_spec(docs), worker(docs)
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 6066, "protocol": "TCP"}]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in spec["volumes"]
    assert "limits" in c["resources"] and "cpu" not in c["resources"]["limits"]


def test_grace_period_covers_the_drain(render: Render) -> None:
    """terminationGracePeriodSeconds covers faust's ~30 s worst-case shutdown with margin."""
    grace = pod_spec(render())["terminationGracePeriodSeconds"]
    assert grace == 45
    assert grace >= 30 + 5


def test_worker_env_from_values(render: Render) -> None:
    """The chart-owned settings, static membership and the advertised pod address."""
    env = worker_env(render())
    assert env["TRENDSTREAM_WEB_HOST"] == "0.0.0.0"
    assert env["TRENDSTREAM_WEB_PORT"] == "6066"
    assert env["TRENDSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["TRENDSTREAM_APP_ID"] == "trendstream"
    assert env["TRENDSTREAM_PARTITIONS"] == "6"
    assert env["TRENDSTREAM_MODEL_DIR"] == "/models/default"
    assert env["TRENDSTREAM_EXECUTION_PROVIDER"] == "cpu"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TRENDSTREAM_GROUP_INSTANCE_ID"] == "$(POD_NAME)"
    assert env["TRENDSTREAM_WEB_CANONICAL_URL"] == "http://$(POD_IP):6066"
    assert env["TRENDSTREAM_ORT_INTRA_OP_THREADS"] == "2"
    assert not any(name.startswith("TRENDSTREAM_SASL") for name in env)
    names = [e["name"] for e in worker(render())["env"]]
    assert names.index("POD_NAME") < names.index("TRENDSTREAM_GROUP_INSTANCE_ID")
    assert names.index("POD_IP") < names.index("TRENDSTREAM_WEB_CANONICAL_URL")


def test_gpu_variant(render: Render) -> None:
    """GPU: the GPU image, an nvidia.com/gpu limit, CUDA provider, GPU nodes, model PVC."""
    docs = render("gpu")
    spec, c, env = pod_spec(docs), worker(docs), worker_env(docs)
    assert c["image"] == "registry.example.com/trendstream-gpu:0.1.0"
    assert c["resources"]["limits"] == {"memory": "6Gi", "nvidia.com/gpu": 1}
    assert env["TRENDSTREAM_EXECUTION_PROVIDER"] == "cuda"
    assert env["CUDA_CACHE_PATH"].startswith("/tmp/")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in spec["tolerations"]
    assert env["TRENDSTREAM_MODEL_DIR"] == "/models/minilm-l6-trend"
    assert {"name": "model", "mountPath": "/models/minilm-l6-trend", "readOnly": True,
            "subPath": "minilm-l6-trend"} in c["volumeMounts"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "trendstream-models",
                                                       "readOnly": True}} in spec["volumes"]
    assert only(docs, "Deployment")["spec"]["replicas"] == 3


def test_sasl_password_only_as_a_mounted_file(render: Render) -> None:
    """SASL: the password comes from the Secret as a file; no env var holds it."""
    docs = render("secure-keda")
    spec, c, env = pod_spec(docs), worker(docs), worker_env(docs)
    assert "TRENDSTREAM_SASL_PASSWORD" not in env
    path = env["TRENDSTREAM_SASL_PASSWORD_FILE"]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "trendstream-kafka"
    assert volume["secret"]["items"] == [{"key": "password", "path": path.rsplit("/", 1)[1]}]
    assert env["TRENDSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["TRENDSTREAM_SSL_CAFILE"].endswith("/ca/ca.crt")
    assert "secretKeyRef" not in json.dumps(c["env"])


def test_keda_scaledobject_follows_the_worker(render: Render) -> None:
    """The kafka trigger watches the worker's own group and input topic, within partitions."""
    docs = render("secure-keda")
    so, env = only(docs, "ScaledObject"), worker_env(docs)
    trigger = so["spec"]["triggers"][0]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == env["TRENDSTREAM_APP_ID"] == "trendstream-prod"
    assert meta["topic"] == env["TRENDSTREAM_TOPIC_PREFIX"] + env["TRENDSTREAM_TOPIC_REVIEWS"]
    assert meta["topic"] == "prod.reviews"
    assert meta["bootstrapServers"] == env["TRENDSTREAM_KAFKA_BOOTSTRAP"]
    assert meta["limitToPartitionsWithLag"] == "true"
    assert meta["allowIdleConsumers"] == "false"
    assert meta["lagThreshold"] == "3000" and meta["activationLagThreshold"] == "100"
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    assert so["spec"]["maxReplicaCount"] <= int(env["TRENDSTREAM_PARTITIONS"])
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "trendstream"}
    assert "replicas" not in only(docs, "Deployment")["spec"]
    auth = only(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"password": ("trendstream-kafka", "password"),
                    "ca": ("kafka-cluster-ca", "ca.crt")}
    assert auth["spec"]["env"] == [{"parameter": "username", "name": "TRENDSTREAM_SASL_USERNAME",
                                    "containerName": "worker"}]


def test_hpa_behaviour_avoids_rebalance_storms(render: Render) -> None:
    """Scale-up waits and steps by 2 pods per 2 min; scale-down 1 pod per 5 min after 10 min."""
    behavior = only(render("secure-keda"), "ScaledObject")["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 60
    assert up["policies"] == [{"type": "Pods", "value": 2, "periodSeconds": 120}]
    assert down["stabilizationWindowSeconds"] == 600
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert down["selectPolicy"] == "Min"


def test_kafka_trigger_uses_only_documented_parameters(render: Render) -> None:
    """Trigger metadata is a free map in KEDA's types: its keys are checked against the docs."""
    # keda-docs content/docs/2.21/scalers/apache-kafka.md, "Parameter list".
    documented = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold",
                  "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
                  "scaleToZeroOnInvalidOffset", "excludePersistentLag",
                  "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "version",
                  "fullMetadata", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
                  "unsafeSsl", "awsRegion"}
    for variant in ("secure-keda", "statefulset"):
        meta = only(render(variant), "ScaledObject")["spec"]["triggers"][0]["metadata"]
        assert set(meta) <= documented, set(meta) - documented
        assert all(isinstance(v, str) for v in meta.values())


def test_statefulset_variant(render: Render) -> None:
    """StatefulSet: stable DNS names advertised, parallel pods, mTLS, model by init container."""
    docs = render("statefulset")
    sts, env, spec = only(docs, "StatefulSet"), worker_env(docs), pod_spec(docs)
    headless = next(s for s in docs if s["kind"] == "Service" and s["spec"].get("clusterIP"))
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert env["TRENDSTREAM_WEB_CANONICAL_URL"] == \
        f"http://$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local:6066"
    assert env["TRENDSTREAM_SSL_CERTFILE"].endswith("/client/tls.crt")
    assert "TRENDSTREAM_SASL_USERNAME" not in env
    init = spec["initContainers"][0]
    assert init["image"] == "registry.example.com/trendstream-model:minilm-l6-trend-2792f3f7f9e3"
    assert {"name": "model", "mountPath": "/models/default"} in init["volumeMounts"]
    assert {"name": "model", "mountPath": "/models/default", "readOnly": True} \
        in worker(docs)["volumeMounts"]
    assert only(docs, "ScaledObject")["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    monitor_selects = {"trendstream-service": "web"}
    assert headless["metadata"]["labels"]["trendstream-service"] != monitor_selects[
        "trendstream-service"]


def test_servicemonitor_scrapes_metrics(render: Render) -> None:
    """The ServiceMonitor scrapes /metrics on the web port of the one non-headless Service."""
    docs = render("secure-keda")
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_alerts_link_runbooks(render: Render) -> None:
    """Four alerts, each with summary, description and a runbook URL to a README heading."""
    rule = only(render("secure-keda"), "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"TrendStreamLagGrowing", "TrendStreamDeadLetterRate",
                           "TrendStreamNoTrendEvents", "TrendStreamWorkerNotReady"}
    readme_anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$",
                      (REPO_ROOT / "README.md").read_text(), flags=re.MULTILINE)}
    base = "https://git.example.com/trendstream/blob/main/README.md#"
    for rule_ in alerts.values():
        notes = rule_["annotations"]
        assert notes["summary"] and notes["description"]
        assert notes["runbook_url"].startswith(base)
        assert notes["runbook_url"].removeprefix(base) in readme_anchors
        assert 'job="trendstream"' in rule_["expr"] and 'namespace="streams"' in rule_["expr"]
    assert 'topic="prod.reviews"' in alerts["TrendStreamLagGrowing"]["expr"]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_schema_env_names_are_the_worker_settings() -> None:
    """values.schema.json allows in `env` exactly the worker settings the chart does not own."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["env"]["propertyNames"]["enum"])
    settings = {f"TRENDSTREAM_{name.upper()}" for name in Settings.model_fields}
    missing = settings - CHART_OWNED - TESTING_ONLY - allowed
    assert not missing, f"add {sorted(missing)} to env.propertyNames.enum in values.schema.json"
    assert allowed <= settings, sorted(allowed - settings)
    assert not allowed & CHART_OWNED


BAD_VALUES = [
    # (what, helm arguments, part of the error)
    ("more replicas than partitions", ["--set", "keda.enabled=true",
                                      "--set", "keda.maxReplicaCount=7"],
     "keda.maxReplicaCount (7) must be <= kafka.partitions (6)"),
    ("fixed replicas beyond partitions", ["--set", "replicaCount=8"],
     "replicaCount (8) must be <= kafka.partitions (6)"),
    ("min above max", ["--set", "keda.enabled=true", "--set", "keda.minReplicaCount=5",
                       "--set", "keda.maxReplicaCount=4"],
     "keda.minReplicaCount (5) must be <= keda.maxReplicaCount (4)"),
    ("an unknown top-level key", ["--set", "replicas=3"],
     "additional properties 'replicas' not allowed"),
    ("an unknown nested key", ["--set", "keda.lagTreshold=10"],
     "additional properties 'lagTreshold' not allowed"),
    ("a misspelt setting in env", ["--set", "env.TRENDSTREAM_BATCH_MAX_SIZ=10"],
     "TRENDSTREAM_BATCH_MAX_SIZ"),
    ("the SASL password as plain env", ["--set", "env.TRENDSTREAM_SASL_PASSWORD=x"],
     "TRENDSTREAM_SASL_PASSWORD"),
    ("a chart-owned setting in env", ["--set", "env.TRENDSTREAM_APP_ID=other"],
     "TRENDSTREAM_APP_ID"),
    ("a number in env", ["--set", "env.TRENDSTREAM_BATCH_MAX_SIZE=512"], "want string"),
    ("zero max replicas", ["--set", "keda.maxReplicaCount=0"], "maxReplicaCount"),
    ("a partition count past the worker's limit", ["--set", "kafka.partitions=2000"],
     "partitions"),
    ("SASL without a password secret", ["--set", "kafka.security.protocol=SASL_SSL",
                                        "--set", "kafka.security.sasl.username=u"],
     "passwordSecret"),
    ("an unknown security protocol", ["--set", "kafka.security.protocol=SASL"], "protocol"),
    ("alerts without a runbook URL", ["--set", "prometheusRule.enabled=true"],
     "runbookBaseUrl"),
    ("a PVC model without a claim", ["--set", "model.source=pvc"], "claimName"),
    ("a grace period shorter than faust's shutdown", ["--set",
                                                     "terminationGracePeriodSeconds=10"],
     "terminationGracePeriodSeconds"),
    ("a bootstrap without a port", ["--set", "kafka.bootstrapServers=kafka"],
     "bootstrapServers"),
]


@pytest.mark.parametrize(("what", "args", "error"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_refused(helm_run: HelmRun, what: str, args: list[str],
                                error: str) -> None:
    """helm refuses values the schema or the template's checks reject, naming the value."""
    result = helm_run("template", "t", str(CHART), *args)
    assert result.returncode != 0, f"{what}: rendered anyway"
    assert error in result.stderr, result.stderr
