"""The worker fails fast, with one clear line and exit 2, on what it cannot start with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.workerproc import free_port

pytestmark = pytest.mark.export


def _worker(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRENDSTREAM_")}
    return subprocess.run([sys.executable, "-m", "stream", "worker"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_unreachable_broker_is_one_clear_error(tiny_model_dir: Path) -> None:
    """Nothing listens on the port: exit 2 naming the bootstrap and the setting."""
    bootstrap = f"127.0.0.1:{free_port()}"
    done = _worker(TRENDSTREAM_MODEL_DIR=str(tiny_model_dir),
                   TRENDSTREAM_KAFKA_BOOTSTRAP=bootstrap)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trendstream: error: cannot reach Kafka at {bootstrap}")
    assert "TRENDSTREAM_KAFKA_BOOTSTRAP" in last and "Traceback" not in done.stderr


def test_missing_model_and_bad_setting_are_one_clear_error(tmp_path: Path) -> None:
    """A model directory without a manifest, and a batch size of 0: exit 2 each."""
    missing = _worker(TRENDSTREAM_MODEL_DIR=str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert str(tmp_path / "nothing-here") in missing.stderr
    bad = _worker(TRENDSTREAM_BATCH_MAX_SIZE="0")
    assert bad.returncode == 2 and "TRENDSTREAM_BATCH_MAX_SIZE" in bad.stderr
