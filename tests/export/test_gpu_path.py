"""The CUDA scoring path, exercised on the CPU provider: IO binding and gpu-check --allow-cpu."""

import json
from pathlib import Path

import numpy as np
import pytest

from stream.batching import pad
from stream.cli import main as cli_main
from stream.errors import RuntimeMissingError
from stream.gpucheck import VARIANTS, WIDE_SIZES, run_gpu_check
from stream.inference import Scorer, import_onnxruntime
from stream.settings import Settings

pytestmark = pytest.mark.export

TEXTS = ["Great tablet, the battery lasts for days.", "bad", "Stopped charging after a week "
         "and support never answered my emails, so I returned it. " * 6, "ok for the price"]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_io_binding_equals_session_run(tiny_model_dir: Path, variant: str) -> None:
    """The IO-bound run (CUDA's path) returns session.run's logits bit for bit on the CPU."""
    scorer = Scorer(tiny_model_dir, variant=variant, provider="cpu")
    feeds = pad(scorer.encode(TEXTS))
    inputs = {i.name: feeds[i.name] for i in scorer.session.get_inputs()}
    bound = scorer._run_bound(inputs, device="cpu")
    plain = scorer.session.run(None, inputs)[0]
    assert bound.dtype == np.float32 and bound.shape == (len(TEXTS), 1)
    assert np.array_equal(bound, plain)


def test_gpu_check_allow_cpu_writes_every_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    """gpu-check --allow-cpu on the tiny model: one JSON, provider cpu, every rate positive."""
    out = tmp_path / "gpu" / "gpu-check.json"
    assert cli_main(["gpu-check", "--model", str(tiny_model_dir), "--out", str(out),
                     "--allow-cpu", "--reviews", "24", "--parity-reviews", "16",
                     "--repeats", "1"]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"check", "created_at", "machine", "onnxruntime", "provider", "model",
                           "data", "parity", "batch_invariance_max_abs_diff", "throughput",
                           "speedup", "target", "elapsed_s"}
    assert report["provider"] == "cpu" and report["target"]["applies"] is False
    assert (report["data"]["parity_reviews"], report["data"]["timed_reviews"]) == (16, 24)
    names = [*(f"fixed-{n}" for n in (1, 8, 32, 128, *WIDE_SIZES)), "sorted-128-chunks-8",
             f"worker-{Settings().batch_max_size}", "worker-512"]
    for variant in VARIANTS:
        assert list(report["throughput"][variant]) == names
        assert all(r["reviews_per_s"] > 0 for r in report["throughput"][variant].values())
        assert report["speedup"][variant]["best_over_per_call"] > 0
        assert report["model"]["variants"][variant]["session_providers"] == [
            "CPUExecutionProvider"]
    parity = report["parity"]
    assert 0 < parity["fp16_vs_fp32"]["max_abs_diff"] <= parity["fp16_atol"]
    assert parity["is_within_atol"] is True
    assert parity["fp32_vs_cpu_fp32"]["max_abs_diff"] == 0.0  # the same CPU session
    assert report["batch_invariance_max_abs_diff"]["fp32"] == 0.0


@pytest.mark.skipif("CUDAExecutionProvider" in import_onnxruntime().get_available_providers(),
                    reason="this machine offers CUDA")
def test_gpu_check_without_cuda_fails_saying_what_to_install(tiny_model_dir: Path) -> None:
    """Without --allow-cpu and without the CUDA provider, the check refuses to run on the CPU."""
    with pytest.raises(RuntimeMissingError, match="no CUDAExecutionProvider: install "
                                                  "onnxruntime-gpu"):
        run_gpu_check(tiny_model_dir)
