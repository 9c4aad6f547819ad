"""``trendstream backtest``: read a review or sales file, run every method, write the results.

Review files are scored with the worker's own scorer and scoring stage (parsing included,
so a review the worker would dead-letter is left out here too), in the replay's order
(``stream.replay.replay_order``), and the scores are cached by (model_id, variant, file
sha256) in ``.cache/backtest/``. Sales files (``product_id,date,units,revenue``, the olist-sales
format) have no text: each unit sold is one event, and ``trendstream`` runs with the
velocity part of the detector only (``volume-v1``: weight 1 on volume, the documented
momentum thresholds with hysteresis), on one partition (one stream clock).

Outputs in ``--out``: ``scorecard.json``, ``calls.jsonl`` and, with the ``report``
extra, per-product PNG plots and ``index.html`` (``stream.backtestplot``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiokafka.partitioner import DefaultPartitioner

from stream import backtest as bt
from stream.artifact import sha256_file
from stream.errors import StreamError
from stream.events import ReviewScore, day_of, to_ms
from stream.replay import plan, replay_order
from stream.reviewfile import iter_records
from stream.scoring import RawRecord, prepare, to_scores
from stream.settings import REPO_ROOT, Settings
from stream.trends import DetectorParams, detector_params

if TYPE_CHECKING:
    from stream.inference import Scorer

log = logging.getLogger(__name__)

CACHE_DIR: Final = REPO_ROOT / ".cache" / "backtest"
_CHUNK: Final = 256
SWEEP_FALL: Final = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SWEEP_RISE: Final = (2.5, 2.0, 1.6, 1.4, 1.25, 1.1)
SWEEP_RATING: Final = (1.0, 0.75, 0.5, 0.3, 0.2, 0.1)


class BacktestError(StreamError):
    """A backtest input that cannot be used."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """What every method runs on."""

    kind: str  # "reviews" or "sales"
    path: Path
    scores: list[ReviewScore]  # replay order
    volume: bt.Volume
    last_day: int
    params: DetectorParams
    model_id: str
    skipped: dict[str, int]
    score_from_day: int | None = None  # calls before it are replayed, not scored
    score_from_why: str = "every call is scored"


def kafka_partition_of(partitions: int) -> bt.PartitionOf:
    """Kafka's default partitioner (murmur2 of the key), as the replay's producer uses it."""
    partitioner, ids = DefaultPartitioner(), list(range(partitions))
    return lambda product_id: partitioner(product_id.encode(), ids, ids)


def _cache_path(path: Path, scorer: Scorer, cache_dir: Path) -> Path:
    """Scores depend on the model, the variant the scorer picked and the file's bytes."""
    return cache_dir / (f"{scorer.model_id}-{scorer.variant.precision}-"
                        f"{sha256_file(path)[:16]}.jsonl.gz")


def read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """A review file's JSON objects in replay order, and how many lines were not objects."""
    try:
        records = list(iter_records(path))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read it as JSON lines (.jsonl or .jsonl.gz): {exc}"
        raise BacktestError(msg) from exc
    rows = sorted((obj for _, obj, _ in records if obj is not None), key=replay_order)
    return rows, len(records) - len(rows)


def score_reviews(path: Path, rows: list[dict[str, Any]], settings: Settings, *,
                  model_dir: Path, cache_dir: Path = CACHE_DIR,
                  ) -> tuple[list[ReviewScore], str, dict[str, int]]:
    """Every review of the file scored by the worker's scoring stage, in replay order."""
    from stream.inference import Scorer  # needs ONNX Runtime: only for review files

    scorer = Scorer.from_settings(settings.model_copy(update={"model_dir": model_dir}))
    cache = _cache_path(path, scorer, cache_dir)
    if cache.is_file():
        with gzip.open(cache, "rt", encoding="utf-8") as f:
            scores = [ReviewScore.model_validate_json(line) for line in f]
        log.info("scores from cache %s (%d)", cache, len(scores))
        return scores, scorer.model_id, {"dead_lettered": len(rows) - len(scores)}
    records = [RawRecord("backtest", 0, i, k, v)
               for i, (k, v) in enumerate(plan(rows, malformed=0, seed=0))]
    scores, dead, started = [], 0, time.monotonic()
    for i in range(0, len(records), _CHUNK):
        prepared = prepare(records[i:i + _CHUNK], max_event_bytes=settings.max_event_bytes,
                           max_raw_chars=settings.dlq_max_raw_chars)
        dead += len(prepared.dead)
        if prepared.reviews:
            scores += to_scores(prepared, scorer.score(prepared.texts),
                                model_id=scorer.model_id)
    log.info("scored %d reviews in %.1f s (%d not scorable)", len(scores),
             time.monotonic() - started, dead)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.writelines(s.model_dump_json() + "\n" for s in scores)
    tmp.replace(cache)
    return scores, scorer.model_id, {"dead_lettered": dead}


def review_inputs(path: Path, settings: Settings, *, model_dir: Path, observation_end: str,
                  cache_dir: Path = CACHE_DIR, score_from: datetime | None = None) -> Inputs:
    """A review file, scored, with its volume series.

    When the file is the model's own training data, only calls from its held-out test
    period on are scored (unless ``score_from`` says otherwise): the detector was fitted
    on the earlier ones.
    """
    from stream.artifact import read_manifest

    rows, unparseable = read_rows(path)
    scores, model_id, skipped = score_reviews(path, rows, settings, model_dir=model_dir,
                                              cache_dir=cache_dir)
    skipped["not_json_objects"] = unparseable
    if not scores:
        raise BacktestError(f"{path}: no scorable reviews ({unparseable} lines are not JSON "
                            f"objects, {skipped['dead_lettered']} fail validation)")
    if unparseable or skipped["dead_lettered"]:
        log.warning("%s: %d lines are not JSON objects and %d reviews fail validation: left "
                    "out, as the worker would dead-letter them", path, unparseable,
                    skipped["dead_lettered"])
    sources = {str(r["review_id"]): str(r.get("source") or "") for r in rows}
    volume = bt.Volume.from_events(
        ((s.product_id, day_of(s.ts_ms), s.rating, sources.get(s.review_id, ""))
         for s in scores), observation_end=observation_end)
    manifest = read_manifest(model_dir)
    params = detector_params(manifest.detector, settings)
    from_day, why = None, "every call is scored: the model was not trained on this file"
    if score_from is not None:
        from_day, why = day_of(to_ms(score_from)), "--score-from"
    elif sha256_file(path) == manifest.training.data_fingerprint:
        start = datetime.fromisoformat(f"{manifest.training.test_start}T00:00:00+00:00")
        from_day = day_of(to_ms(start))
        why = ("the model was trained on this file: only calls in its held-out test period "
               f"(from {manifest.training.test_start}) are scored")
    return Inputs(kind="reviews", path=path, scores=scores, volume=volume,
                  last_day=max(day_of(s.ts_ms) for s in scores), params=params,
                  model_id=model_id, skipped=skipped, score_from_day=from_day,
                  score_from_why=why)


def _sales_rows(path: Path) -> Iterator[tuple[str, str, int]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"product_id", "date", "units"} - set(reader.fieldnames or [])
            if missing:
                msg = f"{path}: not a sales file: columns {sorted(missing)} missing " \
                      f"(want product_id,date,units[,revenue])"
                raise BacktestError(msg)
            for lineno, row in enumerate(reader, start=2):
                try:
                    yield row["product_id"], row["date"], int(row["units"])
                except (TypeError, ValueError) as exc:
                    msg = f"{path}:{lineno}: bad units {row.get('units')!r}; want an integer"
                    raise BacktestError(msg) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise BacktestError(f"{path}: cannot read it as a CSV sales file: {exc}") from exc


def _sale(pid: str, date: str, i: int) -> ReviewScore:
    ts = datetime.fromisoformat(date).replace(tzinfo=UTC)
    sha = hashlib.sha256(f"{pid}\x1f{date}\x1f{i}".encode()).hexdigest()
    return ReviewScore(review_id=f"{pid}:{date}:{i}", product_id=pid, ts=ts, score=0.5,
                       is_text_used=False, unk_ratio=1.0, n_tokens=0, is_truncated=False,
                       rating=None, category=None, content_sha256=sha, model_id="sales",
                       source_partition=0, source_offset=0)


def volume_quantile_day(days: list[int], q: float) -> int:
    """The day by which a share ``q`` of all events had happened."""
    ordered = sorted(days)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def sales_inputs(path: Path, settings: Settings, *, min_units: int,
                 span_quantile: float) -> Inputs:
    """A sales file: one event per unit sold; products below ``min_units`` can never be called."""
    rows = list(_sales_rows(path))
    if not rows:
        raise BacktestError(f"{path}: no sales rows")
    totals: dict[str, int] = {}
    for pid, _, units in rows:
        totals[pid] = totals.get(pid, 0) + units
    kept = sorted((date, pid, units) for pid, date, units in rows if totals[pid] >= min_units)
    scores = [_sale(pid, date, i) for date, pid, units in kept for i in range(units)]
    all_days = [day_of(to_ms(datetime.fromisoformat(d).replace(tzinfo=UTC)))
                for d, _, u in kept for _ in range(u)]
    span_end = volume_quantile_day(all_days, span_quantile)
    volume = bt.Volume.from_events(((s.product_id, day_of(s.ts_ms), None, "sales")
                                    for s in scores), observation_end="source",
                                   span_end_day=span_end)
    params = detector_params(DetectorParams(), settings)
    return Inputs(kind="sales", path=path, scores=scores, volume=volume, last_day=max(all_days),
                  params=params, model_id="sales-velocity",
                  skipped={"products_below_min_units": sum(t < min_units for t in
                                                           totals.values()),
                           "span_end_day": span_end})


def _trendstream(inputs: Inputs, params: DetectorParams,
                 settings: Settings) -> tuple[list[bt.Call], list[bt.Alert]]:
    partition_of = kafka_partition_of(settings.partitions) if inputs.kind == "reviews" \
        else (lambda _pid: 0)
    return bt.trendstream_calls(inputs.scores, params, model_id=inputs.model_id,
                                partition_of=partition_of,
                                allowed_lateness_ms=int(settings.allowed_lateness_s * 1000),
                                evidence_k=settings.evidence_top_k)


def _with_thresholds(params: DetectorParams, fall: float, rise: float) -> DetectorParams:
    return DetectorParams.model_validate({
        **params.model_dump(), "fall_enter_ratio": fall, "fall_exit_ratio": math.sqrt(fall),
        "rise_enter_ratio": rise, "rise_exit_ratio": math.sqrt(rise)})


def run_methods(inputs: Inputs, settings: Settings, *,
                sweep: bool = True) -> dict[str, Any]:
    """Every method's calls, alerts, scorecard and threshold sweep."""
    h = inputs.params.horizon_days
    rules = bt.RuleOptions(min_reviews=inputs.params.min_reviews)
    runs = {"trendstream": _trendstream(inputs, inputs.params, settings),
            "momentum": bt.grid_calls(inputs.volume, bt.momentum_state, method="momentum",
                                      last_day=inputs.last_day, options=rules)}
    if inputs.kind == "reviews":
        runs["rating"] = bt.grid_calls(inputs.volume, bt.rating_state, method="rating",
                                       last_day=inputs.last_day, options=rules)
    cards = {m: bt.scorecard(c, a, inputs.volume, horizon_days=h,
                             min_reviews=inputs.params.min_reviews,
                             from_day=inputs.score_from_day)
             for m, (c, a) in runs.items()}
    if sweep:
        for method, points in _sweeps(inputs, settings, rules).items():
            cards[method]["sweep"] = points
    return {"runs": runs, "scorecard": cards}


def _sweeps(inputs: Inputs, settings: Settings,
            rules: bt.RuleOptions) -> dict[str, list[dict[str, Any]]]:
    h, out = inputs.params.horizon_days, {}
    pairs = list(zip(SWEEP_FALL, SWEEP_RISE, strict=True))
    out["trendstream"] = [bt.sweep_point(_trendstream(
        inputs, _with_thresholds(inputs.params, f, r), settings)[0], inputs.volume,
        horizon_days=h, threshold={"fall_enter_ratio": f, "rise_enter_ratio": r},
        from_day=inputs.score_from_day)
        for f, r in pairs]
    out["momentum"] = [bt.sweep_point(bt.grid_calls(
        inputs.volume, bt.momentum_state, method="momentum", last_day=inputs.last_day,
        options=bt.RuleOptions(min_reviews=rules.min_reviews, fall_below=f, rise_above=r))[0],
        inputs.volume, horizon_days=h, threshold={"fall_below": f, "rise_above": r},
        from_day=inputs.score_from_day)
        for f, r in pairs]
    if inputs.kind == "reviews":
        out["rating"] = [bt.sweep_point(bt.grid_calls(
            inputs.volume, bt.rating_state, method="rating", last_day=inputs.last_day,
            options=bt.RuleOptions(min_reviews=rules.min_reviews, rating_shift=s))[0],
            inputs.volume, horizon_days=h, threshold={"rating_shift": s},
            from_day=inputs.score_from_day) for s in SWEEP_RATING]
    return out


def write_outputs(inputs: Inputs, result: dict[str, Any], out: Path, *,
                  plots: int) -> dict[str, Any]:
    """scorecard.json, calls.jsonl and (report extra) the plots; return the scorecard."""
    out.mkdir(parents=True, exist_ok=True)
    v = inputs.volume
    card = {"data": str(inputs.path), "kind": inputs.kind, "model_id": inputs.model_id,
            "detector": {"version": inputs.params.version,
                         "fall_enter_ratio": inputs.params.fall_enter_ratio,
                         "rise_enter_ratio": inputs.params.rise_enter_ratio,
                         "min_reviews": inputs.params.min_reviews,
                         "sharp_drop_fall": inputs.params.sharp_drop_fall},
            "horizon_days": inputs.params.horizon_days, "products": len(v.days),
            "scored_from": None if inputs.score_from_day is None else
            bt.day_end(inputs.score_from_day - 1).strftime("%Y-%m-%d"),
            "scored_from_why": inputs.score_from_why,
            "events": len(inputs.scores),
            "product_years": round(v.product_years(inputs.score_from_day), 2),
            "skipped": inputs.skipped, "definitions": "README, 'Backtest'",
            "methods": result["scorecard"]}
    (out / "scorecard.json").write_text(json.dumps(card, indent=2) + "\n")
    with (out / "calls.jsonl").open("w") as f:
        for method in bt.METHODS:
            calls = result["runs"].get(method, ([], []))[0]
            for call in sorted(calls, key=lambda c: (c.product_id, c.day)):
                f.write(json.dumps(call.to_json()) + "\n")
    if plots:
        try:
            from stream.backtestplot import write_report
        except ImportError:
            log.warning("matplotlib is not installed (the `report` extra): no plots")
        else:
            write_report(inputs, result, out, max_products=plots)
    return card


def summary_table(card: dict[str, Any]) -> str:
    """The scorecard as a readable table."""
    lines = [f"{card['data']} ({card['kind']}, {card['products']} products, "
             f"{card['events']} events, detector {card['detector']['version']})",
             f"scored: {card['scored_from_why']}",
             f"{'method':<12} {'fall calls':>10} {'prec':>6} {'recall':>6} {'lead d':>6}   "
             f"{'rise calls':>10} {'prec':>6} {'recall':>6} {'lead d':>6}   "
             f"{'sharp':>5} {'false/py':>8}"]
    def num(x: Any) -> str:
        return "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    for method, m in card["methods"].items():
        f, r, s = m["falling"], m["rising"], m["sharp_drop"]
        lines.append(f"{method:<12} {f['calls']:>10} {num(f['precision']):>6} "
                     f"{num(f['recall']):>6} {num(f['median_lead_days']):>6}   "
                     f"{r['calls']:>10} {num(r['precision']):>6} {num(r['recall']):>6} "
                     f"{num(r['median_lead_days']):>6}   {s['alerts']:>5} "
                     f"{num(s['false_per_product_year']):>8}")
    base = card["methods"]["momentum"]
    lines.append(f"base rates on eligible product-days: fall {num(base['falling']['base_rate'])}"
                 f", rise {num(base['rising']['base_rate'])}")
    return "\n".join(lines)
