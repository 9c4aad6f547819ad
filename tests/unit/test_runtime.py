"""The worker's runtime choices: which ONNX Runtime, and that it never needs torch."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from stream import inference
from stream.errors import RuntimeMissingError


def test_missing_onnxruntime_names_both_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ONNX Runtime the error says to install the cpu or the gpu extra."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(RuntimeMissingError) as info:
        inference.import_onnxruntime()
    assert "trendstream[cpu]" in str(info.value) and "trendstream[gpu]" in str(info.value)


def test_both_onnxruntime_packages_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime and onnxruntime-gpu installed together is refused with what to do."""
    real = metadata.distribution

    def fake(name: str) -> metadata.Distribution:
        return real("onnxruntime") if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(metadata, "distribution", fake)
    with pytest.raises(RuntimeMissingError, match="both onnxruntime and onnxruntime-gpu"):
        inference.import_onnxruntime()


def test_worker_modules_do_not_import_torch() -> None:
    """Importing every runtime module (worker, replay, score, demo) leaves torch unloaded."""
    code = ("import sys, stream.cli, stream.worker, stream.app, stream.replay, "
            "stream.batchscore, stream.demo; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
