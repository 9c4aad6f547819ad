"""The worker's runtime choices: which ONNX Runtime, and that it never needs torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest

from stream import inference
from stream.errors import RuntimeMissingError
from stream.settings import REPO_ROOT


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


def test_gpu_check_imports_exactly_the_wheels_its_script_lists() -> None:
    """gpu-check's imports (faust and torch not among them) are the wheels gpu-check.sh lists."""
    code = ("import json, sys, stream.cli, stream.gpucheck, stream.inference; "
            "stream.inference.import_onnxruntime(); print(json.dumps(sorted(sys.modules)))")
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                        text=True, check=True).stdout)
    dist_of = metadata.packages_distributions()
    imported = {_norm(d) for m in modules for d in dist_of.get(m.split(".")[0], [])}
    imported -= {"trendstream", "setuptools"}  # the project; setuptools' .pth start-up hook
    listing = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu-check.sh"), "--list"],
                             capture_output=True, text=True, check=True).stdout
    wheels = {_norm(line.split("\t")[1].split("==")[0]) for line in listing.splitlines()
              if line.startswith("wheel\t")}
    assert "faust-streaming" not in imported and "torch" not in imported
    assert imported == wheels  # the cpu and gpu builds of ONNX Runtime count as one
    assert {line.split("\t")[1].rsplit("/", 1)[1] for line in listing.splitlines()
            if line.startswith("model\t")} == {"manifest.json", "tokenizer.json", "model.onnx",
                                              "model.fp16.onnx"}


def _norm(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return "onnxruntime" if name == "onnxruntime-gpu" else name
