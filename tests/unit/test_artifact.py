"""The model-directory contract: manifest written last, checksums and versions enforced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from stream.artifact import load_model_dir, publish_model_dir, read_manifest
from stream.errors import ArtifactError
from stream.trends import DetectorParams


def _manifest() -> dict[str, Any]:
    metrics = {"n": 10, "roc_auc": 0.6, "accuracy": 0.6, "prior_accuracy": 0.5,
               "positive_rate": 0.5}
    variant = {"file": "model.onnx", "precision": "fp32", "method": "test",
               "parity_max_abs_diff": 0.0, "parity_atol": 1e-4}
    return {
        "model_id": "test-model", "created_at": "2026-12-03T00:00:00Z",
        "base_model": {"name": "x"}, "max_length": 16,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"], "unk_token_id": 100,
        "variants": {"fp32": variant}, "default_variant": {"cpu": "fp32", "cuda": "fp32"},
        "default_variant_reason": "test",
        "training": {"data_files": ["a"], "data_fingerprint": "f", "horizon_days": 90,
                     "observation_end": "product", "train_start": "2016-01-01",
                     "train_end": "2016-06-01", "val_start": "2016-09-01",
                     "val_end": "2016-10-01", "test_start": "2017-01-01",
                     "test_end": "2017-02-01", "n_train": 1, "n_val": 1, "n_test": 1,
                     "hyperparameters": {}, "elapsed_s": 1.0},
        "metrics": {"validation": metrics, "test": metrics},
        "detector": DetectorParams().model_dump(), "versions": {"python": "3.11"},
    }


def _publish(tmp_path: Path) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"graph")
    (staging / "tokenizer.json").write_text("{}")
    target = tmp_path / "model"
    publish_model_dir(staging, target, _manifest())
    return target


def test_publish_writes_checksums_and_loads(tmp_path: Path) -> None:
    """A published directory lists every file's sha256 and verifies on load."""
    target = _publish(tmp_path)
    manifest = load_model_dir(target)
    assert sorted(manifest.files) == ["model.onnx", "tokenizer.json"]
    assert manifest.files["model.onnx"] == hashlib.sha256(b"graph").hexdigest()
    assert not (tmp_path / "staging").exists()


def test_corrupt_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    """An edited model file fails the checksum with a message naming it."""
    target = _publish(tmp_path)
    (target / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        load_model_dir(target)


def test_unknown_format_version_and_missing_manifest_are_refused(tmp_path: Path) -> None:
    """A manifest from the future, or none at all, is refused with what to do."""
    with pytest.raises(ArtifactError, match="no model at"):
        read_manifest(tmp_path)
    target = _publish(tmp_path)
    raw = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        load_model_dir(target)


def test_republish_replaces_the_old_directory(tmp_path: Path) -> None:
    """Publishing again over an existing model swaps it whole."""
    target = _publish(tmp_path)
    staging = tmp_path / "staging2"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"graph2")
    publish_model_dir(staging, target, {**_manifest(), "model_id": "second"})
    assert load_model_dir(target).model_id == "second"
    assert not (target / "tokenizer.json").exists()
