"""Rendered objects against the API schemas: core kinds by kubernetes-validate (strict),
custom resources by crdcheck (strict decoding into KEDA's and prometheus-operator's Go types).
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from .chart import VARIANTS, only, require_tool, write_docs
from .conftest import Render

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The chart's kubeVersion floor and the version helm v3.21 assumes without a cluster.
KUBERNETES_VERSIONS = ("1.27.0", "1.36.0")


def core_docs(docs: list[dict]) -> list[dict]:
    """The documents of built-in kinds."""
    return [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]


def crdcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Run crdcheck on manifest files."""
    return subprocess.run([str(require_tool("crdcheck")), *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_core_kinds_validate_strictly(render: Render, variant: str, version: str) -> None:
    """Every built-in object validates against the Kubernetes OpenAPI schema, no extra field."""
    docs = core_docs(render(variant))
    assert len(docs) >= 5
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{variant} {doc['kind']} {doc['metadata']['name']} on {version}: "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}")


def test_kubernetes_validate_is_strict() -> None:
    """The validator used above rejects an unknown field (so a pass means something)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "IfNotPresent",
                                    "readinessProbe": {"httpGet": {"path": "/readyz",
                                                                   "port": 1},
                                                       "periodSecond": 5}}]}}
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_decode_strictly(render: Render, tmp_path: Path) -> None:
    """ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule decode strictly."""
    files = [write_docs(tmp_path / f"{v}.yaml", render(v)) for v in VARIANTS]
    result = crdcheck(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = dict(line.split()[1:] for line in result.stdout.splitlines()
                   if line.startswith("ok "))
    assert checked == {"keda.sh/v1alpha1/ScaledObject": "2",
                       "keda.sh/v1alpha1/TriggerAuthentication": "2",
                       "monitoring.coreos.com/v1/ServiceMonitor": "1",
                       "monitoring.coreos.com/v1/PrometheusRule": "1"}


@pytest.mark.parametrize(("kind", "path", "value", "error"), [
    ("ScaledObject", ("spec",), {"maxReplicas": 3}, 'unknown field "maxReplicas"'),
    ("ScaledObject", ("spec",), {"minReplicaCount": 13},
     "MinReplicaCount=13 must be less than MaxReplicaCount=12"),
    ("ScaledObject", ("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior",
                      "scaleDown"), {"stabilisationWindowSeconds": 1},
     'unknown field "stabilisationWindowSeconds"'),
    ("ScaledObject", ("spec",), {"pollingInterval": "30"}, "cannot unmarshal string"),
    ("TriggerAuthentication", ("spec",), {"secretRef": []}, 'unknown field "secretRef"'),
    ("ServiceMonitor", ("spec", "endpoints", 0), {"metricsPath": "/metrics"},
     'unknown field "metricsPath"'),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0), {"runbook": "x"},
     'unknown field "runbook"'),
])
def test_crdcheck_rejects_bad_custom_resources(render: Render, tmp_path: Path, kind: str,
                                               path: tuple, value: dict, error: str) -> None:
    """crdcheck fails a custom resource with an unknown or mistyped field, naming it."""
    doc = copy.deepcopy(only(render("secure-keda"), kind))  # renders are cached
    node = doc
    for step in path:
        node = node[step]
    node.update(value)
    result = crdcheck(write_docs(tmp_path / "bad.yaml", [doc]))
    assert result.returncode == 1, result.stdout
    assert error in result.stdout, result.stdout
