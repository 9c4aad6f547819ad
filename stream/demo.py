"""``trendstream demo``: the main job on the bundled real reviews, end to end.

Starts a worker process against the configured Kafka, replays the bundled reviews
from the model's training cut-off minus the detector's lookback, prints every trend
change as it arrives, then writes ``trends.jsonl`` and ``summary.json`` and stops
what it started. Each run uses its own topic prefix and consumer group.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.artifact import Manifest, read_manifest
from stream.errors import StreamError
from stream.events import TrendChange
from stream.kafkaconf import client_options
from stream.replay import replay
from stream.reviewfile import read_products
from stream.settings import REPO_ROOT, Settings
from stream.topics import changelog_names, delete_topics, ensure_topics, topic_names
from stream.workerproc import WorkerProcess, free_port

DEFAULT_DATA = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
READY_TIMEOUT_S = 180.0
STALL_TIMEOUT_S = 180.0


def _date(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _line(change: TrendChange, names: dict[str, str]) -> str:
    sig = change.signals
    name = names.get(change.product_id, "")
    name = (name if len(name) <= 36 else name[:34] + "..") + f" [{change.product_id[-6:]}]"
    new = "went quiet" if change.new_state == "falling" and change.is_quiet else change.new_state
    score = "—" if sig.mean_score_recent is None else f"{sig.mean_score_recent:.2f}"
    rating = "—" if sig.mean_rating_recent is None else f"{sig.mean_rating_recent:.1f}"
    end = change.window_end - timedelta(days=1)
    sharp = "  SHARP DROP" if change.is_sharp_drop else ""
    return (f"{end:%Y-%m-%d}  {name:<44}  {change.previous_state:>7} → {new:<10} "
            f"last 30d {sig.recent_count:>4} vs prior 60d {sig.baseline_count:>4} "
            f"(ratio {min(sig.volume_ratio, 99):.2f}, predicted next 90d "
            f"x{min(math.exp(sig.trend_index), 99):.2f})  text {score}  stars {rating}{sharp}")


async def _follow_trends(settings: Settings, sink: list[TrendChange],
                         stop: asyncio.Event) -> None:
    topic = settings.topic(settings.topic_trends)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed", **client_options(settings))
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                for record in records:
                    sink.append(TrendChange.model_validate_json(record.value))
        end = await consumer.end_offsets(list(consumer.assignment()))
        while await _behind(consumer, end):  # drain what is left after the stop signal
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    sink.append(TrendChange.model_validate_json(record.value))
    finally:
        await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return True
    return False


def _periods(manifest: Manifest, lookback_days: int) -> dict[str, datetime]:
    train_end = _date(manifest.training.train_end)
    return {"replay_from": (train_end - timedelta(days=lookback_days)).replace(
        hour=0, minute=0, second=0), "warmup_until": train_end,
        "out_of_sample_from": _date(manifest.training.test_start)}


async def _run(settings: Settings, worker: WorkerProcess, data: Path, periods: dict[str, Any],
               malformed: int) -> dict[str, Any]:
    changes: list[TrendChange] = []
    stop = asyncio.Event()
    follower = asyncio.create_task(_follow_trends(settings, changes, stop))
    started = time.monotonic()
    report = await replay(settings, data, since=periods["replay_from"], malformed=malformed)
    print(f"produced {report.produced} records ({report.reviews} reviews, {report.malformed} "
          f"malformed) {report.first_ts} → {report.last_ts}", flush=True)
    stats = await asyncio.to_thread(_wait_processed, worker, report.produced, changes)
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the last trend events arrive before draining
    stop.set()
    await follower
    return {"report": report, "stats": stats, "changes": changes, "elapsed_s": elapsed}


def _wait_processed(worker: WorkerProcess, produced: int,
                    changes: list[TrendChange]) -> dict[str, Any]:
    started = last_progress = last_print = time.monotonic()
    last_total = -1
    while True:
        stats = worker.get("/stats") or {}
        total = stats.get("accepted", 0) + stats.get("duplicates_skipped", 0) + \
            stats.get("dead_lettered_total", 0)
        if total >= produced:
            return stats
        now = time.monotonic()
        if total != last_total:
            last_progress, last_total = now, total
        if now - last_progress > STALL_TIMEOUT_S:
            msg = f"worker stalled at {total}/{produced} records; see {worker.log_path}"
            raise StreamError(msg)
        if now - last_print >= 15:
            print(f"  … {total}/{produced} records processed ({total / (now - started):.0f}/s), "
                  f"{len(changes)} trend events so far", flush=True)
            last_print = now
        time.sleep(0.5)


def _print_changes(changes: list[TrendChange], periods: dict[str, datetime],
                   names: dict[str, str]) -> None:
    """Every change after the warm-up, in event-time order (arrival order is per partition)."""
    shown = sorted((c for c in changes if c.window_end > periods["warmup_until"]),
                   key=lambda c: (c.window_end, c.product_id))
    print(f"\ntrend changes after the warm-up ({len(shown)}), by date of the call:")
    for change in shown:
        mark = "  [out of sample]" if change.window_end > periods["out_of_sample_from"] else ""
        print(_line(change, names) + mark)


def run_demo(settings: Settings, *, data: Path | None, out: Path, malformed: int,
             keep_topics: bool) -> int:
    """Run the demo; return the process exit code."""
    data = data or DEFAULT_DATA
    manifest = read_manifest(settings.model_dir)
    run_id = datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    web_port = free_port()
    overrides = {"TRENDSTREAM_TOPIC_PREFIX": f"{run_id}.", "TRENDSTREAM_APP_ID":
                 f"trendstream-{run_id}", "TRENDSTREAM_WEB_PORT": str(web_port)}
    settings = settings.model_copy(update={"topic_prefix": overrides["TRENDSTREAM_TOPIC_PREFIX"],
                                           "app_id": overrides["TRENDSTREAM_APP_ID"]})
    periods = _periods(manifest, manifest.detector.lookback_days)
    out.mkdir(parents=True, exist_ok=True)
    _print_header(manifest, data, periods, settings)
    asyncio.run(ensure_topics(settings))
    (out / "worker.log").unlink(missing_ok=True)
    worker = WorkerProcess({**os.environ, **overrides}, out / "worker.log")
    try:
        ready_s = worker.wait_ready(READY_TIMEOUT_S)
        print(f"worker ready in {ready_s:.1f} s (log: {worker.log_path}; pages while it "
              f"runs: {worker.url}/healthz /readyz /stats /metrics /products/<id>)\n",
              flush=True)
        result = asyncio.run(_run(settings, worker, data, periods, malformed))
    finally:
        worker.stop()
        if not keep_topics:
            asyncio.run(_cleanup(settings))
    _print_changes(result["changes"], periods, read_products(data))
    summary = _summary(manifest, result, periods, run_id)
    _write_outputs(out, result["changes"], summary)
    _print_summary(summary, out)
    return 0


async def _cleanup(settings: Settings) -> None:
    assignor = f"{settings.app_id}-__assignor-__leader"  # faust's own leader topic
    await delete_topics(settings, topic_names(settings) + changelog_names(settings) + [assignor])


def _print_header(manifest: Manifest, data: Path, periods: dict[str, datetime],
                  settings: Settings) -> None:
    test, val = manifest.metrics["test"], manifest.metrics["validation"]
    print(f"TrendStream demo — model {manifest.model_id}")
    print(f"  per-review text model: test ROC-AUC {_fmt(test.roc_auc)} (validation "
          f"{_fmt(val.roc_auc)}), accuracy {test.accuracy:.3f} vs constant prior "
          f"{test.prior_accuracy:.3f}: the per-review text signal is weak")
    detector = manifest.detector
    weights = ", ".join(f"{f} {w:+.2f}" for f, w in detector.weights.items())
    print(f"  detector {detector.version}: predicted next-90-day volume ratio from {weights} "
          f"(README, \"Trend rule\"; `make backtest` scores its calls)")
    print(f"data: {data.relative_to(REPO_ROOT) if data.is_relative_to(REPO_ROOT) else data}")
    print(f"replaying {periods['replay_from']:%Y-%m-%d} → end of data into "
          f"{settings.kafka_bootstrap} (topics '{settings.topic_prefix}*')")
    print(f"  warm-up until {periods['warmup_until']:%Y-%m-%d} (training period: calls "
          f"not shown); calls after {periods['out_of_sample_from']:%Y-%m-%d} are out of "
          "sample (held-out test period)\n", flush=True)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _summary(manifest: Manifest, result: dict[str, Any], periods: dict[str, datetime],
             run_id: str) -> dict[str, Any]:
    stats, report, changes = result["stats"], result["report"], result["changes"]
    test = manifest.metrics["test"]
    shown = [c for c in changes if c.window_end > periods["warmup_until"]]
    return {
        "run_id": run_id,
        "replayed_from": report.first_ts, "replayed_to": report.last_ts,
        "reviews_in": report.produced, "reviews_scored": stats["accepted"],
        "dead_lettered": stats["dead_lettered_total"],
        "dead_lettered_by_reason": stats["dead_lettered"],
        "duplicates_skipped": stats["duplicates_skipped"],
        "unknown_fields": stats["unknown_fields"],
        "trend_events": len(changes), "sharp_drop_alerts": stats.get("alerts", 0),
        "detector_version": manifest.detector.version, "trend_events_after_warmup": len(shown),
        "trend_events_out_of_sample": sum(c.window_end > periods["out_of_sample_from"]
                                          for c in changes),
        "elapsed_s": round(result["elapsed_s"], 2),
        "reviews_per_s": round(report.produced / result["elapsed_s"], 1),
        "model_id": manifest.model_id, "provider": stats.get("provider"),
        "variant": stats.get("variant"),
        "test_auc": test.roc_auc, "test_accuracy": test.accuracy,
        "prior_accuracy": test.prior_accuracy,
    }


def _write_outputs(out: Path, changes: list[TrendChange], summary: dict[str, Any]) -> None:
    with (out / "trends.jsonl").open("w") as f:
        for change in changes:
            f.write(change.model_dump_json() + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print("\nsummary")
    for key in ("reviews_in", "reviews_scored", "dead_lettered", "duplicates_skipped",
                "trend_events", "trend_events_after_warmup", "trend_events_out_of_sample",
                "sharp_drop_alerts", "detector_version", "elapsed_s", "reviews_per_s",
                "model_id", "provider", "variant", "test_auc", "test_accuracy",
                "prior_accuracy"):
        value = summary[key]
        print(f"  {key:<28} {round(value, 3) if isinstance(value, float) else value}")
    print(f"  {'dead letters by reason':<28} {summary['dead_lettered_by_reason']}")
    print(f"\nwrote {out / 'trends.jsonl'} and {out / 'summary.json'}")
