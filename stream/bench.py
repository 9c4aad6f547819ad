"""``trendstream bench``: how far the worker's pieces are from the raw ONNX Runtime limit.

Measured in one run, on one machine, with one model file, over the same reviews in the
same order (the bundled Datafiniti set in replay order):

* ``raw``: tokenizer + ONNX Runtime alone, per batch policy: fixed batches of 1, 8, 32
  and 128 in arrival order (each padded to its longest review); windows of 128 sorted by
  length and run in chunks of 8; and the worker's own policy (``Scorer.score`` on
  consecutive micro-batches of ``BATCH_MAX_SIZE``). ``raw_best`` names the fastest;
* ``aggregate.pure``: the worker's aggregation step (``stream.aggregation`` on dict
  tables, Kafka's partitioner) fed pre-scored events, events/s.

Not measured yet (issue 4): the pipeline through the broker, the naive per-event agent,
the aggregation through faust tables with changelog, CPU seconds per process, peak RSS
with 1,000,000 products' state, the GPU path. The JSON lists them under
``not_measured``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream.inference import Scorer, review_text
from stream.replay import load_sorted
from stream.settings import REPO_ROOT, Settings

DEFAULT_DATA: Final = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
NOT_MEASURED: Final = ("pipeline", "naive", "aggregate.faust_tables", "cpu_seconds_by_process",
                       "worker_peak_rss", "state_1m_products", "gpu")


def _fixed(scorer: Scorer, texts: Sequence[str], size: int) -> None:
    for i in range(0, len(texts), size):
        scorer.run_chunk(scorer.encode(texts[i:i + size]))


def _sorted_windows(scorer: Scorer, texts: Sequence[str], window: int, chunk: int) -> None:
    for i in range(0, len(texts), window):
        ids = scorer.encode(texts[i:i + window])
        order = np.argsort([len(r) for r in ids], kind="stable")
        for j in range(0, len(order), chunk):
            scorer.run_chunk([ids[k] for k in order[j:j + chunk]])


def _worker_policy(scorer: Scorer, texts: Sequence[str], batch: int) -> None:
    for i in range(0, len(texts), batch):
        scorer.score(texts[i:i + batch])


def policies(batch_max_size: int) -> dict[str, Callable[[Scorer, Sequence[str]], None]]:
    """Every raw batch policy the bench times, by name."""
    return {"fixed-1": lambda s, t: _fixed(s, t, 1), "fixed-8": lambda s, t: _fixed(s, t, 8),
            "fixed-32": lambda s, t: _fixed(s, t, 32),
            "fixed-128": lambda s, t: _fixed(s, t, 128),
            "sorted-128-chunks-8": lambda s, t: _sorted_windows(s, t, 128, 8),
            f"worker-{batch_max_size}": lambda s, t: _worker_policy(s, t, batch_max_size)}


def time_raw(scorer: Scorer, texts: Sequence[str], *, batch_max_size: int,
             repeats: int) -> dict[str, Any]:
    """Reviews/s of each policy (best of ``repeats`` passes, after one warm-up pass)."""
    out: dict[str, Any] = {}
    for name, run in policies(batch_max_size).items():
        run(scorer, texts[:64])  # warm-up: session arenas, tokenizer caches
        best = min(_seconds(lambda r=run: r(scorer, texts)) for _ in range(repeats))
        out[name] = {"reviews_per_s": round(len(texts) / best, 1), "seconds": round(best, 3)}
    return out


def _seconds(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def time_aggregate(rows: list[dict[str, Any]], settings: Settings,
                   scorer: Scorer) -> dict[str, Any]:
    """Events/s of the pure aggregation step over pre-scored reviews (hashed scores)."""
    from stream import backtest as bt
    from stream.backtestio import kafka_partition_of
    from stream.events import ReviewScore
    from stream.trends import detector_params

    scores = [ReviewScore(
        review_id=r["review_id"], product_id=r["product_id"], ts=datetime.fromisoformat(r["ts"]),
        score=int(hashlib.sha256(r["review_id"].encode()).hexdigest()[:4], 16) / 65535,
        is_text_used=True, unk_ratio=0.0, n_tokens=10, is_truncated=False,
        rating=None if r.get("rating") is None else float(r["rating"]),
        category=r.get("category"), content_sha256=r["review_id"][:16], model_id=scorer.model_id,
        source_partition=0, source_offset=i) for i, r in enumerate(rows)]
    params = detector_params(scorer.manifest.detector, settings)
    started = time.perf_counter()
    calls, _ = bt.trendstream_calls(scores, params, model_id=scorer.model_id,
                                    partition_of=kafka_partition_of(settings.partitions),
                                    allowed_lateness_ms=int(settings.allowed_lateness_s * 1000))
    seconds = time.perf_counter() - started
    return {"events": len(scores), "events_per_s": round(len(scores) / seconds, 1),
            "trend_changes": len(calls), "seconds": round(seconds, 3)}


def run_bench(settings: Settings, *, data: Path = DEFAULT_DATA, n_reviews: int,
              repeats: int) -> dict[str, Any]:
    """Every measurement of this slice, as one JSON document."""
    scorer = Scorer(settings.model_dir, variant=settings.model_variant,
                    provider=settings.execution_provider,
                    intra_op_threads=settings.ort_intra_op_threads)
    rows = load_sorted(data)
    texts = [review_text(r.get("title"), r["text"]) for r in rows[:n_reviews]]
    raw = time_raw(scorer, texts, batch_max_size=settings.batch_max_size, repeats=repeats)
    best = max(raw, key=lambda k: raw[k]["reviews_per_s"])
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "model": {"model_id": scorer.model_id, "file": scorer.variant.file,
                  "precision": scorer.variant.precision, "provider": scorer.provider,
                  "intra_op_threads": settings.ort_intra_op_threads or os.cpu_count(),
                  "max_length": scorer.max_length},
        "data": {"file": str(data), "reviews": len(texts), "order": "replay (ts, review_id)"},
        "raw": raw, "raw_best": best,
        "aggregate": {"pure": time_aggregate(rows, settings, scorer)},
        "not_measured": list(NOT_MEASURED),
    }


def table(report: dict[str, Any]) -> str:
    """The bench as a readable table."""
    m = report["model"]
    lines = [f"model {m['model_id']} {m['precision']} on {m['provider']}, "
             f"{m['intra_op_threads']} threads, {report['data']['reviews']} reviews",
             f"{'raw policy':<24} {'reviews/s':>10}"]
    lines += [f"{name:<24} {r['reviews_per_s']:>10.1f}" + ("  <- best" if name ==
              report["raw_best"] else "") for name, r in report["raw"].items()]
    agg = report["aggregate"]["pure"]
    lines.append(f"aggregate (pure, dict tables): {agg['events_per_s']:.0f} events/s over "
                 f"{agg['events']} events")
    lines.append("not measured yet: " + ", ".join(report["not_measured"]))
    return "\n".join(lines)


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
