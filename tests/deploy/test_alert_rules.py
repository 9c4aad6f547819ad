"""The chart's alert rules under promtool: they load, and they fire when they should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .chart import only, require_tool
from .conftest import Render

TESTS = Path(__file__).with_name("alerts.promtest.yaml")
RULES_ON = ("--set", "prometheusRule.enabled=true",
            "--set", "prometheusRule.runbookBaseUrl=https://example.invalid/trendstream/README.md")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool."""
    return subprocess.run([str(require_tool("promtool")), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def write_rules(render: Render, directory: Path, *, variant: str = "default",
                extra: tuple[str, ...] = RULES_ON) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rules file."""
    rule = only(render(variant, extra=extra), "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.mark.parametrize("variant", ["default", "secure-keda"])
def test_rules_pass_promtool_check(render: Render, tmp_path: Path, variant: str) -> None:
    """`promtool check rules` accepts the rules (PromQL and annotation templates)."""
    extra = RULES_ON if variant == "default" else ()
    rules = write_rules(render, tmp_path, variant=variant, extra=extra)
    result = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_alerts_fire_on_the_failures_they_name(render: Render, tmp_path: Path) -> None:
    """promtool unit tests: lag growth, DLQ rate, not ready and no trend events fire; the
    near misses (flat lag, a trickle, a fresh install, a replaced worker) do not."""
    write_rules(render, tmp_path)
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(render: Render, tmp_path: Path) -> None:
    """A rule changed to never fire makes the unit tests fail (they test something)."""
    rules = write_rules(render, tmp_path)
    text = rules.read_text().replace("> 0.05", "> 0.5")  # the DLQ ratio
    assert text != rules.read_text()
    rules.write_text(text)
    tests = yaml.safe_load(TESTS.read_text())
    tests["tests"] = [t for t in tests["tests"] if t["name"] == "dead-letter rate fires"]
    (tmp_path / TESTS.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert result.returncode == 1
    assert "dead-letter rate fires" in result.stdout + result.stderr
