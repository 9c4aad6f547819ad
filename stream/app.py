"""Faust wiring: topics, tables, the two agents, web pages. Logic lives elsewhere.

* ``score`` agent (reviews -> review-scores, review-score-batches / reviews-dlq):
  micro-batches with a size and a time cap (``take_events``), tokenizer + ONNX Runtime
  in one executor thread, outputs delivered (acks=all) before the batch is acked. Each
  micro-batch also goes out as one record per input partition on the internal
  ``review-score-batches`` topic, on that same partition;
* ``aggregate`` agent (review-score-batches -> trends, trend-alerts / reviews-dlq):
  takes those records in batches, updates the changelogged tables through
  :class:`TableStore` (one write per changed product per batch; faust's ``table[k] = v``
  inside ``take()`` would pick the wrong changelog partition, #497) and sends the
  changes. Reading one record per micro-batch instead of one per review is what lets it
  keep up with a GPU scorer: faust's per-record overhead (~90 us here) was most of the
  cost of aggregating;
* a timer that, in live mode (``idle_tick_interval_s`` > 0), sends wall-clock ticks to
  every partition of review-score-batches, so silent partitions still close days.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

import faust
from mode import CrashingSupervisor
from pydantic import TypeAdapter, ValidationError

from stream.aggregation import TICK_KEY, Aggregator, StepResult, tick_record
from stream.events import DeadLetter, ReviewScore, dead_letter
from stream.inference import Scorer
from stream.scoring import RawRecord, prepare, score_prepared
from stream.settings import Settings
from stream.stats import Stats
from stream.topics import CLOCKS_TABLE, WINDOWS_TABLE
from stream.trends import DetectorParams

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """Everything the agents share: settings, scorer, aggregator, counters."""

    settings: Settings
    scorer: Scorer
    params: DetectorParams
    stats: Stats = field(default_factory=Stats)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="score"))
    is_warm: bool = False


def _faust_app(settings: Settings) -> faust.App:
    # Tables live in memory (state is rebuilt from the changelog); faust still makes a
    # data directory: keep it out of the working directory.
    datadir = Path(tempfile.gettempdir()) / "trendstream-faust" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    return faust.App(
        settings.app_id, broker=f"kafka://{settings.kafka_bootstrap}", store="memory://",
        datadir=str(datadir),
        env_prefix="TRENDSTREAM_FAUST_", topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor, topic_allow_declare=True,
        producer_acks=-1, broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        consumer_auto_offset_reset="earliest", web_bind=settings.web_host,
        web_port=settings.web_port, web_host=settings.web_host, web_enabled=True,
        table_cleanup_interval=3600.0, key_serializer="raw", value_serializer="raw",
        # Larger fetches feed the aggregate agent's big batches (measured: 6.5k -> 8.5k
        # scored reviews/s through the tables; faust's defaults are 1 MiB and unbounded).
        consumer_max_fetch_size=4 << 20, broker_max_poll_records=5000,
        # A crashed agent stops the worker (the orchestrator restarts it) instead of a
        # half-alive process that reports ready while one stage is dead.
        agent_supervisor=CrashingSupervisor,
    )


def build_app(pipeline: Pipeline, *, naive_scoring: bool = False) -> faust.App:
    """Create the faust app with its topics, tables, agents and pages.

    ``naive_scoring`` swaps the micro-batching score agent for the baseline that
    ``trendstream bench`` compares it with: one review per tokenizer call and
    ``session.run``, in the same executor thread with the same ONNX Runtime settings.
    """
    s = pipeline.settings
    app = _faust_app(s)
    # faust warns "producer buffer full" past 100 pending sends; a scored batch plus its
    # changelog writes is more than that by design, and sends are awaited per batch.
    app.producer.buffer.max_messages = 8 * s.batch_max_size + 1000
    raw = {"key_type": bytes, "value_type": bytes, "partitions": s.partitions}
    reviews = app.topic(s.topic(s.topic_reviews), **raw)
    scores = app.topic(s.topic(s.topic_scores), **raw)
    batches = app.topic(s.topic(s.topic_score_batches), **raw)
    trends = app.topic(s.topic(s.topic_trends), **raw)
    alerts = app.topic(s.topic(s.topic_alerts), **raw)
    dlq = app.topic(s.topic(s.topic_dlq), **raw)
    windows = app.Table(WINDOWS_TABLE, partitions=s.partitions, key_type=str,
                        value_type=bytes)  # raw bytes: our own compact encoding
    clocks = app.Table(CLOCKS_TABLE, partitions=s.partitions, key_type=str,
                       value_type=bytes)
    aggregator = Aggregator(params=pipeline.params, model_id=pipeline.scorer.model_id,
                            allowed_lateness_ms=int(s.allowed_lateness_s * 1000),
                            evidence_k=s.evidence_top_k, windows=TableStore(windows),
                            clocks=TableStore(clocks),
                            expire_after_days=s.state_expire_after_days)

    async def send_all(topic: faust.TopicT, items: list[tuple[str, bytes]], *,
                       wait: bool = True) -> None:
        futures = [await topic.send(key=k.encode(), value=v) for k, v in items]
        if wait:
            await asyncio.gather(*futures)  # delivered (acks=all) before the batch is acked

    async def score_and_send(events: list[faust.EventT], *, wait: bool = True) -> None:
        records = [RawRecord(e.message.topic, e.message.partition, e.message.offset,
                             e.message.key, e.message.value) for e in events]
        outputs, dead = await _score_batch(pipeline, records)
        encoded = [(o.product_id, o.to_bytes()) for o in outputs]
        await send_all(scores, encoded, wait=wait)
        by_partition: dict[int, list[bytes]] = {}
        for score, (_, value) in zip(outputs, encoded, strict=True):
            by_partition.setdefault(score.source_partition, []).append(value)
        futures = [await batches.send(value=score_batch_record(values), partition=p)
                   for p, values in by_partition.items()]
        if wait:
            await asyncio.gather(*futures)
        await send_all(dlq, [(d.key or "", d.to_bytes()) for d in dead], wait=wait)

    if naive_scoring:
        @app.agent(reviews, concurrency=1, name="score")
        async def score_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():  # as a plain faust agent: no wait for acks
                await score_and_send([event], wait=False)
    else:
        @app.agent(reviews, concurrency=1)
        async def score(stream: faust.StreamT) -> None:
            async for events in stream.take_events(s.batch_max_size,
                                                   within=s.batch_max_wait_s):
                await score_and_send(events)

    @app.agent(batches, concurrency=1)
    async def aggregate(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.aggregate_batch_max_records,
                                               within=s.batch_max_wait_s):
            changes, found, dead = [], [], []
            for event in events:
                for result, rejected in _aggregate_record(pipeline, aggregator, event):
                    changes += result.changes
                    found += result.alerts
                    dead += rejected
            aggregator.flush()  # one changelog write per changed product and clock
            await send_all(trends, [(c.product_id, c.to_bytes()) for c in changes])
            await send_all(alerts, [(a.product_id, a.to_bytes()) for a in found])
            await send_all(dlq, [(d.key or "", d.to_bytes()) for d in dead])

    if s.idle_tick_interval_s > 0:
        @app.timer(s.idle_tick_interval_s)
        async def tick() -> None:
            now_ms = int(time.time() * 1000)
            for tp in app.consumer.assignment():
                if tp.topic == batches.get_topic_name():
                    await batches.send(key=TICK_KEY, value=tick_record(now_ms),
                                       partition=tp.partition)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        aggregator.forget_partitions()

    _add_pages(app, pipeline)
    return app


async def _score_batch(pipeline: Pipeline,
                       records: list[RawRecord]) -> tuple[list[ReviewScore], list[DeadLetter]]:
    s = pipeline.settings
    started = time.perf_counter()
    latest = datetime.now(UTC) + timedelta(seconds=s.max_future_s)
    prepared = prepare(records, max_event_bytes=s.max_event_bytes,
                       max_raw_chars=s.dlq_max_raw_chars, latest_ts=latest)
    loop = asyncio.get_running_loop()
    outputs, unscorable = await loop.run_in_executor(pipeline.executor, partial(
        score_prepared, prepared, pipeline.scorer.score, model_id=pipeline.scorer.model_id,
        max_raw_chars=s.dlq_max_raw_chars))
    dead = prepared.dead + unscorable
    pipeline.stats.on_batch(consumed=len(records), scored=len(outputs), dead=dead,
                            unknown_fields=prepared.unknown_fields,
                            seconds=time.perf_counter() - started)
    return outputs, dead


class TableStore:
    """A faust table as the aggregator's StateStore, writing to the changelog partition
    the caller names.

    A batch from ``take_events`` mixes partitions, and faust's own ``table[key] = value``
    takes the changelog partition from the *current* event (the last of the batch).
    The state's partition is known, so writes go through ``send_changelog`` with it, as
    faust's ``on_key_set`` does for one event.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: str) -> bytes | None:
        value = self.table.data.get(key)
        return None if value is None else bytes(value)

    def put(self, partition: int, key: str, value: bytes) -> None:
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        self.table.data.pop(key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")

    def items(self) -> Iterable[tuple[str, bytes]]:
        return self.table.data.items()


def score_batch_record(scores: list[bytes]) -> bytes:
    """The value of a review-score-batches record: a JSON array of ReviewScore objects."""
    return b"[" + b",".join(scores) + b"]"


_SCORE_LIST: Final = TypeAdapter(list[ReviewScore])


def _aggregate_record(pipeline: Pipeline, aggregator: Aggregator,
                      event: faust.EventT) -> list[tuple[StepResult, list[DeadLetter]]]:
    """Apply one review-score-batches record (a tick, or a batch of scored reviews)."""
    msg = event.message
    if msg.key == TICK_KEY:
        ticked = aggregator.on_tick(msg.partition, json.loads(msg.value)["tick_ms"])
        pipeline.stats.on_trends(ticked.changes, ticked.alerts)
        return [(ticked, [])]

    def to_dlq(reason: str, detail: str, review_id: str | None,
               raw: bytes | None = msg.value) -> DeadLetter:
        return dead_letter(reason=reason, detail=detail, stage="aggregate", topic=msg.topic,
                           partition=msg.partition, offset=msg.offset, key=msg.key, raw=raw,
                           max_raw_chars=pipeline.settings.dlq_max_raw_chars,
                           review_id=review_id)
    try:
        scores: list[ReviewScore | DeadLetter] = list(
            _SCORE_LIST.validate_json(msg.value or b""))
    except ValidationError:  # not from our scorer: find the items that are bad
        scores = _validate_items(msg.value, to_dlq)
    out = []
    for score in scores:
        if isinstance(score, DeadLetter):
            pipeline.stats.on_aggregate(None, [score])
            out.append((StepResult(), [score]))
        else:
            out.append(_aggregate_one(pipeline, aggregator, msg.partition, score, to_dlq))
    return out


def _validate_items(value: bytes | None, to_dlq: Any) -> list[ReviewScore | DeadLetter]:
    try:
        items = json.loads(value or b"")
    except ValueError as exc:
        return [to_dlq("invalid_json", f"not a JSON array of ReviewScore: {exc}"[:500], None)]
    if not isinstance(items, list):
        return [to_dlq("wrong_type", "not a JSON array of ReviewScore", None)]
    found: list[ReviewScore | DeadLetter] = []
    for item in items:
        try:
            found.append(ReviewScore.model_validate_json(json.dumps(item)))
        except ValidationError as exc:
            review_id = item.get("review_id") if isinstance(item, dict) else None
            found.append(to_dlq("wrong_type", f"not a ReviewScore: {exc.errors()[0]['msg']}",
                                review_id if isinstance(review_id, str) else None,
                                json.dumps(item).encode()))
    return found


def _aggregate_one(pipeline: Pipeline, aggregator: Aggregator, partition: int,
                   score: ReviewScore, to_dlq: Any) -> tuple[StepResult, list[DeadLetter]]:
    try:
        result = aggregator.on_score(partition, score)
    except Exception as exc:  # one record must never stop the stream: DLQ it, go on
        log.warning("unprocessable score partition=%d review_id=%s: %r", partition,
                    score.review_id, exc)
        dead = [to_dlq("unprocessable", f"{type(exc).__name__}: {exc}"[:500], score.review_id,
                       score.to_bytes())]
        pipeline.stats.on_aggregate(None, dead)
        return StepResult(), dead
    rejected = result.rejected
    dead = [] if rejected is None else [to_dlq(rejected.reason, rejected.detail,
                                               score.review_id, score.to_bytes())]
    pipeline.stats.on_aggregate(result, dead)
    pipeline.stats.on_trends(result.changes, result.alerts)
    return result, dead


def _add_pages(app: faust.App, pipeline: Pipeline) -> None:
    @app.page("/healthz")
    async def healthz(web_view: Any, request: Any) -> Any:
        return web_view.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web_view: Any, request: Any) -> Any:
        status = readiness(app, pipeline)
        return web_view.json(status, status=200 if status["ready"] else 503)

    @app.page("/stats")
    async def stats(web_view: Any, request: Any) -> Any:
        return web_view.json({**pipeline.stats.as_dict(), "model_id": pipeline.scorer.model_id,
                              "provider": pipeline.scorer.provider,
                              "variant": pipeline.scorer.variant.precision})

    del healthz, readyz, stats  # registered on the app by the decorators


def readiness(app: faust.App, pipeline: Pipeline) -> dict[str, Any]:
    """Ready = model warm, partitions assigned, table recovery finished."""
    assigned = len(app.consumer.assignment()) if app.consumer else 0
    recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
    return {"ready": pipeline.is_warm and assigned > 0 and recovered,
            "model_warm": pipeline.is_warm, "partitions_assigned": assigned,
            "tables_recovered": recovered}
