"""The parts of ``trendstream bench`` that run through the real broker.

Every run gets its own topic prefix and consumer group, so runs never see each other's
records. Rates come from the record timestamps Kafka stores (CreateTime, set by the
sending producer), not from polling: a run's rate is (n - 1) / (last - first) over the
records a stage wrote.

* :func:`saturation`: the input topic is loaded *before* the worker starts; the worker
  then runs flat out. Scoring rate = reviews/s written to review-scores.
* :func:`latency`: the worker is ready first, then reviews are produced at a fixed rate;
  produce→score per review (review-scores record time - input record time, joined on
  ``source_partition``/``source_offset``), and produce→trend per TrendChange (its record
  time - the input record time of the review that closed the day it reports on).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.errors import StreamError
from stream.events import MS_PER_DAY, day_of
from stream.replay import Record, produce
from stream.settings import Settings
from stream.topics import changelog_names, delete_topics, ensure_topics, topic_names
from stream.workerproc import WorkerProcess, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Stored:
    """One record as the broker stores it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise StreamError(f"no VmHWM for pid {pid}")


def rss_bytes(pid: int) -> int:
    """The process's resident set now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise StreamError(f"no VmRSS for pid {pid}")


def bench_settings(base: Settings, label: str) -> Settings:
    """The base settings with this run's own topics, consumer group and web port."""
    run = f"{label}-{uuid.uuid4().hex[:8]}"
    return base.model_copy(update={"app_id": f"ts-bench-{run}",
                                   "topic_prefix": f"bench-{run}.", "web_port": free_port()})


def env_of(settings: Settings) -> dict[str, str]:
    """The settings as TRENDSTREAM_* variables for a worker process (unset = default);
    TRENDSTREAM_FAUST_* (faust's own settings) pass through."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRENDSTREAM_")
           or k.startswith("TRENDSTREAM_FAUST_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TRENDSTREAM_{name.upper()}"] = str(value)
    return env


async def read_all(bootstrap: str, topic: str, *, partitions: int, timeout_s: float = 60,
                   client: dict[str, Any] | None = None) -> list[Stored]:
    """Every record of a topic (read_committed), with partition, offset and timestamp;
    ``client``: security options (stream.kafkaconf.client_options)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed",
                                max_partition_fetch_bytes=8 << 20, **(client or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Stored] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise StreamError(f"could not read {topic} to its end in {timeout_s:.0f} s")
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out += [Stored(tp.partition, r.offset, r.timestamp, r.key, r.value,
                               tuple(r.headers or ())) for r in records]
        return out
    finally:
        await consumer.stop()


async def topic_size(settings: Settings, topic: str) -> int:
    """Records in a topic (sum of end offsets; no transactions on these topics)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


FIRST_BURST_MS = 100


def rate_of(records: list[Stored]) -> float:
    """Records per second after the first burst: the records stamped within
    FIRST_BURST_MS of the first one (a whole micro-batch sent at once, whose compute
    began before any timestamp) open the span and are not counted in it."""
    stamps = sorted(r.timestamp_ms for r in records)
    first = stamps[0]
    opened = max(t for t in stamps if t - first <= FIRST_BURST_MS)
    after = sum(1 for t in stamps if t > opened)
    span_s = (stamps[-1] - opened) / 1000
    return after / span_s if span_s > 0 else float("nan")


def percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1),
            "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "max_ms": round(float(arr.max()), 1), "n": int(arr.size)}


class Run:
    """One worker process on its own topics; CPU and memory sampled from /proc."""

    def __init__(self, settings: Settings, log_dir: Path, label: str, *,
                 broker_pid: int | None, worker_args: tuple[str, ...] = ()) -> None:
        self.settings = bench_settings(settings, label)
        self.log_path = log_dir / f"{label}.log"
        self.broker_pid = broker_pid
        self.worker_args = worker_args
        self.worker: WorkerProcess | None = None
        self.cpu_start: dict[str, float] = {}

    async def __aenter__(self) -> Run:
        await ensure_topics(self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            self.worker.stop()
        await delete_topics(self.settings, [*topic_names(self.settings),
                                            *changelog_names(self.settings),
                                            f"{self.settings.app_id}-__assignor-__leader"])

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    async def read(self, topic: str) -> list[Stored]:
        """Every record of one of this run's topics."""
        return await read_all(self.settings.kafka_bootstrap, topic,
                              partitions=self.settings.partitions)

    def start_worker(self, *, ready_timeout_s: float = 180.0) -> float:
        """Start the worker and wait until it is ready; seconds from start to ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.worker = WorkerProcess(env_of(self.settings), self.log_path,
                                    args=self.worker_args)
        ready_s = self.worker.wait_ready(ready_timeout_s)
        self.cpu_start = self._cpu()
        return ready_s

    def _cpu(self) -> dict[str, float]:
        assert self.worker is not None
        found = {"worker": cpu_seconds(self.worker.proc.pid),
                 "producer_and_bench": time.process_time()}
        if self.broker_pid is not None:
            found["broker"] = cpu_seconds(self.broker_pid)
        return found

    def cpu_since_ready(self) -> dict[str, Any]:
        """CPU seconds by process since the worker was ready, and each one's share."""
        now = self._cpu()
        spent = {k: round(now[k] - self.cpu_start[k], 2) for k in now}
        total = sum(spent.values()) or 1.0
        return {"seconds": spent, "share": {k: round(v / total, 3) for k, v in spent.items()}}

    def peak_rss(self) -> int:
        assert self.worker is not None
        return peak_rss_bytes(self.worker.proc.pid)

    async def wait_stats(self, done: Callable[[dict[str, Any]], bool], *,
                         timeout_s: float) -> dict[str, Any]:
        """Poll the worker's /stats until ``done`` holds for it."""
        assert self.worker is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.worker.get("/stats")
            if stats and done(stats):
                return stats
            await asyncio.sleep(0.2)
        raise StreamError(f"bench run {self.settings.app_id} did not finish in "
                          f"{timeout_s:.0f} s; see {self.log_path}")


def _all_aggregated(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s["accepted"] + s["duplicates_skipped"] + s["dead_lettered_total"] >= n


def warm_rate(scores: list[Stored], warmup_ids: set[str]) -> float:
    """Scores/s of the timed reviews (those not in ``warmup_ids``), counted from the end of
    the burst that wrote the last warm-up review's score (its micro-batch, timed reviews
    included, was computed before that): the worker is warm by then, as the raw bench is
    after its warm-up pass. Without warm-up reviews: :func:`rate_of`."""
    if not warmup_ids:
        return rate_of(scores)
    order = sorted(scores, key=lambda r: r.timestamp_ms)
    is_warmup = [json.loads(r.value or b"")["review_id"] in warmup_ids for r in order]
    last_warm = max(r.timestamp_ms for r, w in zip(order, is_warmup, strict=True) if w)
    # the burst that carried the last warm-up score (its whole micro-batch) opens the span
    opened = max(r.timestamp_ms for r in order if r.timestamp_ms <= last_warm + FIRST_BURST_MS)
    timed = [r for r, w in zip(order, is_warmup, strict=True)
             if not w and r.timestamp_ms > opened]
    span_s = (order[-1].timestamp_ms - opened) / 1000
    return len(timed) / span_s if span_s > 0 and timed else float("nan")


async def saturation(settings: Settings, records: list[Record], log_dir: Path, label: str, *,
                     broker_pid: int | None, worker_args: tuple[str, ...] = (),
                     warmup_ids: frozenset[str] = frozenset(),
                     timeout_s: float = 1800) -> dict[str, Any]:
    """Load the input topic, then start the worker: reviews/s scored at saturation,
    timed after the warm-up reviews (``warmup_ids``, at the head of ``records``)."""
    async with Run(settings, log_dir, label, broker_pid=broker_pid,
                   worker_args=worker_args) as run:
        await produce(run.settings, records, topic=run.topic(settings.topic_reviews))
        ready_s = run.start_worker()
        started = time.monotonic()
        stats = await run.wait_stats(_all_aggregated(len(records)), timeout_s=timeout_s)
        wall_s = time.monotonic() - started
        cpu, rss = run.cpu_since_ready(), run.peak_rss()
        scores = await run.read(run.topic(settings.topic_scores))
        trends = await topic_size(run.settings, run.topic(settings.topic_trends))
    return {"reviews": len(records), "scored": len(scores),
            "warmup_reviews": len(warmup_ids),
            "reviews_per_s": round(warm_rate(scores, set(warmup_ids)), 1),
            "wall_s_ready_to_aggregated": round(wall_s, 2), "ready_after_s": round(ready_s, 2),
            "trend_events": trends, "batches": stats["batches"],
            "mean_batch_size": round(stats["consumed"] / max(1, stats["batches"]), 1),
            "cpu": cpu, "worker_peak_rss_bytes": rss}


def _trigger_ms(reviews: list[Stored], lateness_ms: int) -> dict[tuple[int, int], int]:
    """(partition, day) -> timestamp of the input record that closed that day there."""
    closing: dict[tuple[int, int], int] = {}
    by_partition: dict[int, list[Stored]] = {}
    for r in reviews:
        by_partition.setdefault(r.partition, []).append(r)
    for partition, records in by_partition.items():
        closed: int | None = None
        stream_ms: int | None = None
        for r in sorted(records, key=lambda x: x.offset):
            ts_ms = _event_ms(r.value)
            if ts_ms is None or (stream_ms is not None and ts_ms <= stream_ms):
                continue
            stream_ms = ts_ms
            now_closed = day_of(ts_ms - lateness_ms) - 1
            first = now_closed if closed is None else closed + 1
            for day in range(first, now_closed + 1):
                closing[(partition, day)] = r.timestamp_ms
            closed = now_closed if closed is None else max(closed, now_closed)
    return closing


def _event_ms(value: bytes | None) -> int | None:
    try:
        return int(datetime.fromisoformat(json.loads(value or b"")["ts"]).timestamp() * 1000)
    except (ValueError, KeyError, TypeError):
        return None


async def latency(settings: Settings, records: list[Record], log_dir: Path, *,
                  rate_per_s: float, broker_pid: int | None,
                  timeout_s: float = 1800) -> dict[str, Any]:
    """Worker ready first, then reviews at ``rate_per_s``: produce→score, produce→trend."""
    async with Run(settings, log_dir, "latency", broker_pid=broker_pid) as run:
        ready_s = run.start_worker()
        pace = [i / rate_per_s for i in range(len(records))]
        await produce(run.settings, records, topic=run.topic(settings.topic_reviews),
                      pace_s=pace)
        await run.wait_stats(_all_aggregated(len(records)), timeout_s=timeout_s)
        cpu = run.cpu_since_ready()
        reviews = await run.read(run.topic(settings.topic_reviews))
        scores = await run.read(run.topic(settings.topic_scores))
        trends = await run.read(run.topic(settings.topic_trends))
    produced = {(r.partition, r.offset): r.timestamp_ms for r in reviews}
    to_score = []
    for s in scores:
        body = json.loads(s.value or b"")
        to_score.append(s.timestamp_ms - produced[(body["source_partition"],
                                                   body["source_offset"])])
    closing = _trigger_ms(reviews, int(settings.allowed_lateness_s * 1000))
    to_trend = []
    for t in trends:
        body = json.loads(t.value or b"")
        end_ms = int(datetime.fromisoformat(body["window_end"]).timestamp() * 1000)
        trigger = closing.get((t.partition, end_ms // MS_PER_DAY - 1))
        if trigger is not None:
            to_trend.append(t.timestamp_ms - trigger)
    produced_rate = rate_of(reviews)
    return {"offered_reviews_per_s": round(rate_per_s, 1),
            "produced_reviews_per_s": round(produced_rate, 1), "reviews": len(records),
            "ready_after_s": round(ready_s, 2),
            "produce_to_score": percentiles(to_score),
            "produce_to_trend": percentiles(to_trend) if to_trend else None,
            "trend_events": len(trends), "trend_events_matched": len(to_trend), "cpu": cpu}


async def produce_score_batches(settings: Settings, scores: list[tuple[bytes, bytes]]) -> None:
    """(product_id, ReviewScore JSON) pairs onto review-score-batches, grouped as the
    worker groups them: per partition of the product, BATCH_MAX_SIZE scores a record."""
    from aiokafka import AIOKafkaProducer

    from stream.app import score_batch_record
    from stream.backtestio import kafka_partition_of

    partition_of = kafka_partition_of(settings.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                linger_ms=20, max_request_size=16 << 20)
    await producer.start()
    try:
        topic = settings.topic(settings.topic_score_batches)
        for i in range(0, len(scores), settings.batch_max_size):
            by_partition: dict[int, list[bytes]] = {}
            for key, value in scores[i:i + settings.batch_max_size]:
                by_partition.setdefault(partition_of(key.decode()), []).append(value)
            for p, values in by_partition.items():
                await producer.send(topic, value=score_batch_record(values), partition=p)
        await producer.flush()
    finally:
        await producer.stop()


async def aggregate_tables(settings: Settings, scores: list[tuple[bytes, bytes]], log_dir: Path,
                           *, broker_pid: int | None, timeout_s: float = 900) -> dict[str, Any]:
    """Pre-scored reviews on review-score-batches (as the scorer writes them: one record
    per partition per micro-batch of BATCH_MAX_SIZE), worker started after: scored
    reviews/s through the aggregate agent and its changelogged tables (timed by polling
    /stats every 50 ms)."""
    async with Run(settings, log_dir, "aggregate", broker_pid=broker_pid) as run:
        await produce_score_batches(run.settings, scores)
        run.start_worker()
        assert run.worker is not None
        n, first = len(scores), None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = run.worker.get("/stats") or {}
            done = stats.get("accepted", 0) + stats.get("duplicates_skipped", 0) + \
                stats.get("dead_lettered_total", 0)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done >= n:
                break
            await asyncio.sleep(0.05)
        else:
            raise StreamError(f"aggregate bench did not finish; see {run.log_path}")
        assert first is not None
        cpu = run.cpu_since_ready()
        changelog = await topic_size(run.settings, changelog_names(run.settings)[0])
    seconds = now - first[0]
    return {"events": n, "events_per_s": round((n - first[1]) / seconds, 1) if seconds > 0
            else None, "seconds": round(seconds, 2), "trend_events": stats["trend_events_total"],
            "windows_changelog_records": changelog,
            "changelog_records_per_event": round(changelog / n, 4), "cpu": cpu}
