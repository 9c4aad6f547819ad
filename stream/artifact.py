"""The model-directory contract: the only thing that crosses from ``export`` to ``stream``.

A model directory holds ONNX graphs (one file per precision variant), the tokenizer and
``manifest.json``. The manifest is written LAST, into a staging directory that is then
renamed into place: no manifest, no model. :func:`load_model_dir` refuses an unknown
format version or any checksum mismatch with a message that names the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream.errors import ArtifactError
from stream.trends import DetectorParams

FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"

Precision = Literal["fp32", "int8", "fp16"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Variant(_Frozen):
    """One ONNX graph of the model."""

    file: str
    precision: Precision
    method: str = Field(description="how it was made, e.g. 'optimum export', "
                                    "'static QDQ int8, per-channel, calibrated'")
    parity_max_abs_diff: float = Field(description="max |score difference| vs PyTorch on the "
                                                   "parity set (sigmoid space)")
    parity_atol: float
    batch_invariance_max_abs_diff: float | None = Field(
        None, description="max |score difference| of one review across batch compositions")
    is_batch_invariant: bool | None = None


class ModelOutput(_Frozen):
    """What the graph returns and how to read it."""

    name: str = "logits"
    shape: list[str | int] = ["batch", 1]
    activation: Literal["sigmoid"] = "sigmoid"
    meaning: str = ("logit of P(up): the product's review count in (t, t+H] exceeds its count "
                    "in (t-H, t]; the worker applies the sigmoid")


class Metrics(_Frozen):
    """Per-review metrics on one split, the constant prior beside the model."""

    n: int
    roc_auc: float | None
    accuracy: float
    prior_accuracy: float = Field(description="accuracy of always predicting the training "
                                              "majority class")
    positive_rate: float
    brier: float | None = None


class Training(_Frozen):
    """What the model learned from, and the time cut-offs of the split."""

    data_files: list[str]
    data_fingerprint: str
    horizon_days: int
    observation_end: Literal["product", "source"]
    train_start: str
    train_end: str
    val_start: str
    val_end: str
    test_start: str
    test_end: str
    n_train: int
    n_val: int
    n_test: int
    hyperparameters: dict[str, Any]
    elapsed_s: float


class Manifest(_Frozen):
    """``manifest.json``: everything the worker needs to trust and run a model."""

    format_version: int
    model_id: str
    created_at: str
    base_model: dict[str, str]
    max_length: int
    inputs: list[str]
    output: ModelOutput = ModelOutput()
    tokenizer_file: str = "tokenizer.json"
    unk_token_id: int
    variants: dict[str, Variant]
    default_variant: dict[Literal["cpu", "cuda"], str]
    default_variant_reason: str
    files: dict[str, str] = Field(description="relative path -> sha256 of every other file")
    training: Training
    metrics: dict[str, Metrics]
    detector: DetectorParams
    detector_fit: dict[str, Any] | None = Field(None, description="how the detector was fitted "
                                                "(export/detector_fit.py); None = defaults")
    versions: dict[str, str]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def publish_model_dir(staging: Path, target: Path, manifest: dict[str, Any]) -> Manifest:
    """Checksum ``staging``, write its manifest LAST, then rename it to ``target``.

    ``manifest`` is everything but ``files`` and ``format_version``. An existing
    ``target`` is replaced only after the new directory is complete.
    """
    full = Manifest.model_validate({**manifest, "format_version": FORMAT_VERSION,
                                    "files": _checksums(staging)})
    tmp = staging / (MANIFEST_NAME + ".tmp")
    tmp.write_text(full.model_dump_json(indent=2) + "\n")
    os.replace(tmp, staging / MANIFEST_NAME)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return full


def read_manifest(model_dir: Path) -> Manifest:
    """Parse ``manifest.json`` without verifying checksums (cheap; for tools)."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        msg = (f"no model at {model_dir}: {path} is missing; run `make model` "
               f"(or `trendstream export`) or set TRENDSTREAM_MODEL_DIR")
        raise ArtifactError(msg)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        msg = (f"{path}: format_version {version!r} is not supported (this worker reads "
               f"{FORMAT_VERSION}); re-export the model with this version of trendstream")
        raise ArtifactError(msg)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path} does not match the manifest schema: {exc}") from exc


def load_model_dir(model_dir: Path) -> Manifest:
    """Read the manifest and verify every file's sha256; raise ArtifactError on any doubt."""
    manifest = read_manifest(model_dir)
    for rel, expected in manifest.files.items():
        path = Path(model_dir) / rel
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but missing; re-export")
        if sha256_file(path) != expected:
            msg = f"{path}: sha256 does not match manifest.json (corrupt or edited); re-export"
            raise ArtifactError(msg)
    return manifest
