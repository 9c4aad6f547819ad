"""The fp16 variant: converted from the fp32 graph, checked on the CPU provider, published."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnxconverter_common import float16

from export.fp16 import add_fp16, convert_fp16, cpu_error
from export.package import FP16_FILE
from export.validate import PARITY_ATOL
from stream.artifact import load_model_dir, publish_model_dir, read_manifest, sha256_file
from stream.cli import main as cli_main
from stream.errors import ArtifactError
from stream.gpucheck import run_gpu_check
from stream.inference import Scorer

pytestmark = pytest.mark.export

TEXTS = ["Great tablet, the battery lasts for days.", "bad", "Stopped charging after a week "
         "and support never answered my emails, so I returned it. " * 6, "ok for the price"]


def _without_fp16(source: Path, dest: Path) -> Path:
    """A copy of ``source`` as an export before this variant existed would have left it."""
    staging = dest.with_name(dest.name + ".staging")
    shutil.copytree(source, staging)
    (staging / FP16_FILE).unlink()
    manifest = read_manifest(staging)
    fields = manifest.model_dump(exclude={"files", "format_version"})
    fields["variants"].pop("fp16")
    fields["default_variant"]["cuda"] = "fp32"
    fields["default_variant_reason"] = (manifest.default_variant_reason.partition(". cuda ")[0]
                                        + ". cuda fp32: no fp16 variant is built yet")
    publish_model_dir(staging, dest, fields)
    return dest


def test_export_ships_fp16_as_the_cuda_default(tiny_model_dir: Path) -> None:
    """The export writes model.fp16.onnx at about half fp32's size, checksummed, cuda default."""
    manifest = load_model_dir(tiny_model_dir)
    fp16, fp32 = manifest.variants["fp16"], manifest.variants["fp32"]
    assert manifest.default_variant == {"cpu": "int8", "cuda": "fp16"}
    assert (fp16.file, fp16.precision, fp16.parity_atol) == (FP16_FILE, "fp16", 0.01)
    assert manifest.files[FP16_FILE] == sha256_file(tiny_model_dir / FP16_FILE)
    assert 0 < fp16.parity_max_abs_diff <= PARITY_ATOL["fp16"]
    assert fp16.batch_invariance_max_abs_diff is None and fp16.is_batch_invariant is None
    assert "onnxconverter-common" in fp16.method and "CPU provider vs PyTorch" in fp16.method
    sizes = [(tiny_model_dir / f).stat().st_size for f in (fp16.file, fp32.file)]
    assert 0.45 < sizes[0] / sizes[1] < 0.55
    assert "onnxconverter-common" in manifest.versions


def test_fp16_graph_keeps_the_workers_io(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Weights become float16; the int64 inputs and the float32 logits stay as they were."""
    out = convert_fp16(tiny_model_dir / "model.onnx", tmp_path / "m.onnx")
    graph = onnx.load(str(out)).graph
    assert {i.type.tensor_type.elem_type for i in graph.input} == {TensorProto.INT64}
    assert [o.type.tensor_type.elem_type for o in graph.output] == [TensorProto.FLOAT]
    types = [t.data_type for t in graph.initializer]
    assert TensorProto.FLOAT not in types and TensorProto.FLOAT16 in types
    assert cpu_error(out) is None


@pytest.mark.filterwarnings("ignore:the float32 number")  # the converter's clamping notes
def test_cpu_error_names_why_a_graph_does_not_load(tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    """The converter's own output (Casts still 'to' float) fails to load, and cpu_error says so."""
    model = onnx.load(str(tiny_model_dir / "model.onnx"))
    broken = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    error = cpu_error(tmp_path / "broken.onnx")
    assert error is not None and "Cast" in error and "tensor(float16)" in error


def test_fp16_scores_match_fp32_on_the_cpu_provider(tiny_model_dir: Path) -> None:
    """The CPU provider runs the fp16 graph; its scores stay within 0.01 of fp32, not equal."""
    fp16 = Scorer(tiny_model_dir, variant="fp16", provider="cpu").score(TEXTS).scores
    fp32 = Scorer(tiny_model_dir, variant="fp32", provider="cpu").score(TEXTS).scores
    diff = np.abs(fp16 - fp32)
    assert 0 < diff.max() <= PARITY_ATOL["fp16"]


def test_export_fp16_adds_the_variant_to_an_old_directory(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """export-fp16 republishes an fp16-less directory: new file checksummed, the rest kept."""
    old = _without_fp16(tiny_model_dir, tmp_path / "model")
    before = read_manifest(old)
    with pytest.raises(ArtifactError, match="export-fp16"):
        run_gpu_check(old, allow_cpu=True)
    assert cli_main(["export-fp16", "--model", str(old), "--reviews", "32"]) == 0
    after = load_model_dir(old)  # every checksum, the new file's included
    assert set(after.files) == set(before.files) | {FP16_FILE}
    assert all(after.files[k] == v for k, v in before.files.items())
    assert after.default_variant == {"cpu": before.default_variant["cpu"], "cuda": "fp16"}
    assert (after.model_id, after.variants["int8"]) == (before.model_id, before.variants["int8"])
    fp16 = after.variants["fp16"]
    assert "vs the fp32 graph (model.onnx" in fp16.method and "32 reviews" in fp16.method
    assert 0 < fp16.parity_max_abs_diff <= fp16.parity_atol
    assert after.default_variant_reason.startswith(before.default_variant_reason.partition(
        ". cuda ")[0] + ". cuda fp16: ")
    assert not list(tmp_path.glob("*.staging-*")) and not (tmp_path / "model.old").exists()


def test_export_fp16_twice_rebuilds_in_place(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A second run replaces the fp16 variant; the directory still verifies, nothing else moves."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    first = json.loads((copy / "manifest.json").read_text())["files"]
    manifest, result = add_fp16(copy, n_reviews=16)
    assert result.variant is not None and load_model_dir(copy) == manifest
    assert manifest.files == first  # same conversion, same bytes
    assert len(manifest.variants) == 3
