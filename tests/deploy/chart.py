"""Helpers for the Helm chart checks: where the tools are, rendered documents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "trendstream"
VARIANTS = ("default", "gpu", "secure-keda", "statefulset")
RELEASE, NAMESPACE = "trendstream", "streams"


def tools_bin() -> Path:
    """Where scripts/install-tools.sh puts its tools."""
    base = os.environ.get("TRENDSTREAM_TOOLS_DIR") or REPO_ROOT / ".cache" / "tools"
    return Path(base) / "bin"


def require_tool(name: str) -> Path:
    """The tool's path; fail under CI, skip locally, when it is not installed."""
    path = tools_bin() / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    msg = f"{path} is missing: run `bash scripts/install-tools.sh` (`make test` does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def variant_args(variant: str) -> list[str]:
    """helm arguments for one of the chart's ci/ values files ("default": none)."""
    return [] if variant == "default" else ["-f", str(CHART / "ci" / f"{variant}-values.yaml")]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one document of a kind."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} documents of kind {kind}"
    return found[0]


def worker_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker container's env entries by name (value, or the valueFrom dict)."""
    workload = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))
    container = next(c for c in workload["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "worker")
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def write_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    """Write documents as one multi-document YAML file."""
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
