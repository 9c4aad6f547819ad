"""Fixtures for the Helm chart checks: real helm from scripts/install-tools.sh, renders.

No cluster is involved: the chart is rendered by real helm and the output is validated
offline (kubernetes-validate, crdcheck, promtool). A missing tool fails the test under
CI=true (`make test` installs them first) and skips it elsewhere, with what to run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chart import CHART, NAMESPACE, RELEASE, REPO_ROOT, require_tool, variant_args

Render = Callable[..., list[dict[str, Any]]]
HelmRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary built from source by scripts/install-tools.sh."""
    return require_tool("helm")


@pytest.fixture(scope="session")
def helm_run(helm: Path) -> HelmRun:
    """Run helm with arguments; the result, whatever the exit code."""
    home = str(REPO_ROOT / ".cache" / "helm")
    env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home,
           "HELM_DATA_HOME": home}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(helm), *args], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
    return run


@pytest.fixture(scope="session")
def render(helm_run: HelmRun) -> Render:
    """Render the chart (`helm template`) and parse its documents; cached per arguments."""
    cache: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def rendered(variant: str = "default", *, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
        key = (variant, *extra)
        if key not in cache:
            result = helm_run("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                              *variant_args(variant), *extra)
            assert result.returncode == 0, result.stderr
            cache[key] = [d for d in yaml.safe_load_all(result.stdout) if d]
        return cache[key]

    return rendered
