"""Faust wiring: topics, tables, the two agents, web pages. Logic lives elsewhere.

* ``score`` agent (reviews -> review-scores, review-score-batches / reviews-dlq):
  micro-batches with a size and a time cap (``take_events``), tokenizer + ONNX Runtime
  in one executor thread, outputs delivered (acks=all) before the batch is acked. Each
  micro-batch also goes out as one record per input partition on the internal
  ``review-score-batches`` topic, on that same partition;
* ``aggregate`` agent (review-score-batches -> trends, trend-alerts, trend-state /
  reviews-dlq):
  takes those records in batches, updates the changelogged tables through
  :class:`TableStore` (one write per changed product per batch; faust's ``table[k] = v``
  inside ``take()`` would pick the wrong changelog partition, #497) and sends the
  changes. Reading one record per micro-batch instead of one per review is what lets it
  keep up with a GPU scorer: faust's per-record overhead (~90 us here) was most of the
  cost of aggregating;
* ``deliver_alerts`` agent (trend-alerts -> webhooks / reviews-dlq), only when
  webhooks are configured: :class:`~stream.alerthooks.AlertHooks` sends each alert to
  every hook with retries; a batch is acked once delivered or dead-lettered;
* a timer that, in live mode (``idle_tick_interval_s`` > 0), sends wall-clock ticks to
  every partition of review-score-batches, so silent partitions still close days.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

import faust
from faust.exceptions import ConsumerNotStarted
from mode import CrashingSupervisor
from pydantic import TypeAdapter, ValidationError

from stream.aggregation import TICK_KEY, Aggregator, StepResult, tick_record
from stream.alerthooks import AlertHooks
from stream.cloudevents import Binding
from stream.errors import StreamError
from stream.events import DeadLetter, ReviewScore, dead_letter
from stream.inference import Scorer
from stream.kafkaconf import faust_credentials
from stream.metrics import CONTENT_TYPE, Metrics
from stream.productpage import add_product_page
from stream.scoring import RawRecord, prepare, score_prepared
from stream.settings import Settings
from stream.stats import Stats
from stream.topics import CLOCKS_TABLE, WINDOWS_TABLE
from stream.trends import DetectorParams
from stream.trendstate import StateRecord, state_records

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
    hooks: AlertHooks | None = None  # alert webhooks; None: no delivery agent
    metrics: Metrics = field(init=False)
    commits: BatchCommits | None = None  # set by build_app; SIGTERM drains through it

    def __post_init__(self) -> None:
        self.metrics = Metrics(stats=self.stats, info={
            "model_id": self.scorer.model_id, "provider": self.scorer.provider,
            "variant": self.scorer.variant.precision,
            "guarantee": self.settings.processing_guarantee})
        if self.hooks is not None:
            self.metrics.webhooks = self.hooks.counts.totals


@dataclass
class StallWatch:
    """Input partitions with records waiting while the agents made no progress at all
    (on any partition) for ``after_s``.

    faust 0.15 can stop delivering records after a restart with table recovery while
    the partitions stay assigned (``make chaos``: 32 records consumed, then none for
    minutes, lag 7,968). A worker that sees it exits (code 3) so the orchestrator
    restarts it, as a liveness probe would. Progress is judged over all partitions
    together: a busy agent serves one partition's backlog while others wait (the demo:
    partition 1 waited 45 s behind the others, which is not a stall).
    """

    after_s: float
    signature: tuple[tuple[str, int], ...] = ()
    since: float | None = None

    def reset(self) -> None:
        self.signature, self.since = (), None

    def stalled(self, waiting: dict[Any, tuple[int, int]], now: float) -> list[str]:
        """``waiting``: tp -> (next offset to process, highwater); the stalled tps."""
        behind = [f"{tp.topic}[{tp.partition}]@{done}<{highwater}"
                  for tp, (done, highwater) in waiting.items() if done < highwater]
        signature = tuple(sorted((f"{tp.topic}[{tp.partition}]", done)
                                 for tp, (done, _) in waiting.items()))
        if not behind or signature != self.signature or self.since is None:
            self.signature, self.since = signature, now
            return []
        return behind if now - self.since >= self.after_s else []


@dataclass
class BatchCommits:
    """Offsets are committed only at batch boundaries, never after a broken batch, and,
    under exactly_once, in the transaction that holds the batch's outputs.

    faust 0.15 behaviours that lose or double records around a crash, found by
    ``make chaos``:

    * ``take_events`` acks every event of the batch in a ``finally`` -- also when the
      agent is cancelled or raises in the middle of it (the other agent crashed, an input
      gap), and faust's shutdown then commits them: reviews never scored were committed.
      So a batch that ends by an exception marks the worker ``is_broken``, and from then
      on no commit is made; the restarted worker reads the batch again.
    * faust commits a transaction (with the acked input offsets) from its commit timer,
      its fetch loop and ``wait_empty`` -- whatever the agents are doing. A commit between
      a batch's outputs and its input ack made the outputs visible while the input was
      read again after a crash. So every commit takes one lock, and each agent sends,
      acks and commits under it.
    * faust computes the offsets to commit from its acked-offsets list, which misses
      offsets it delivered twice around its start-up seek: a batch of offsets 87-110
      committed 89 in the transaction that carried all 24 scores (then scored again).
      So under exactly_once the agent commits the transactions itself, with the offsets
      after the last record of its batch (``commit_transactions`` of faust's producer:
      ``send_offsets_to_transaction`` + ``commit_transaction`` per transactional id).
    * faust's ``TransactionManager.send`` finds the transactional producer through the
      consumer's metadata, which lacks the topics the app does not consume: outputs to
      review-scores, trends, trend-alerts and reviews-dlq left the transaction (the
      broker's log showed them isTransactional=false). :meth:`transactional_id` names the
      producer of the input partition instead.

    faust's ``Consumer.commit`` is wrapped once the consumer exists (first assignment).
    """

    is_transactional: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    is_broken: bool = False
    is_drained: bool = False
    app: Any = None
    gates: dict[str, asyncio.Lock] = field(default_factory=dict)  # agent -> held per batch
    _commit: Any = None  # faust's own Consumer.commit

    def install(self, app: faust.App) -> None:
        """Route every commit faust makes through the lock and the broken check."""
        if self._commit is not None:
            return
        self.app, consumer = app, app.consumer
        self._commit = consumer.commit

        async def commit(*args: Any, **kwargs: Any) -> bool:
            async with self.lock:
                return await self._commit_unless_broken(*args, **kwargs)
        consumer.commit = commit

    def transactional_id(self, topic: str, partition: int) -> str:
        """faust's transactional id for an input partition (its offsets commit there)."""
        group = self.app.assignor.group_for_topic(topic)
        return f"{self.app.conf.id}-{group}-{partition}"

    async def _commit_unless_broken(self, *args: Any, **kwargs: Any) -> bool:
        if self.is_broken:
            log.warning("not committing: a batch ended by an exception; the restarted "
                        "worker reads it again")
            return False
        if self.is_drained:
            return False  # drain() committed every finished batch; later acks are faust's
        return bool(await self._commit(*args, **kwargs))

    @asynccontextmanager
    async def batch(self, agent: str, *, drains: bool = True) -> AsyncIterator[None]:
        """Around a whole agent batch: an exception (cancellation too) marks it broken.
        ``drains``: SIGTERM waits for this agent's batch (not for a webhook delivery)."""
        gate = self.gates.setdefault(agent, asyncio.Lock()) if drains else asyncio.Lock()
        try:
            async with gate:
                yield
        except BaseException:
            self.is_broken = True
            raise

    async def drain(self) -> None:
        """On SIGTERM, before faust stops (and cancels) the agents: let the batches in
        flight finish, commit them, and commit nothing after (faust's shutdown would ack,
        and so commit, a batch taken but not processed)."""
        if self._commit is None:
            return
        for gate in list(self.gates.values()):
            await gate.acquire()  # held until the process exits: no batch starts again
        async with self.lock:
            if not self.is_broken:
                await self._commit()
            self.is_drained = True

    @asynccontextmanager
    async def sending(self, stream: faust.StreamT,
                      events: list[faust.EventT]) -> AsyncIterator[None]:
        """Send the batch's outputs inside; exactly_once: on exit ack the input and commit
        its offsets with the outputs, all under the lock."""
        if not self.is_transactional:
            yield
            return
        async with self.lock:
            yield
            for event in events:  # take_events acks them again after the body: a no-op
                await stream.ack(event)
            await self._commit_batch(events)

    async def _commit_batch(self, events: list[faust.EventT]) -> None:
        offsets: dict[Any, int] = {}
        for event in events:
            tp = event.message.tp
            offsets[tp] = max(offsets.get(tp, 0), event.message.offset + 1)
        by_id: dict[str, dict[Any, int]] = {}
        for tp, offset in offsets.items():
            by_id.setdefault(self.transactional_id(tp.topic, tp.partition), {})[tp] = offset
        await self.app.producer.commit_transactions(by_id, self.app.conf.id,
                                                    start_new_transaction=True)
        committed = self.app.consumer._committed_offset  # faust's view: no later regress
        for tp, offset in offsets.items():
            committed[tp] = max(committed.get(tp) or 0, offset)


class InputGapError(StreamError):
    """faust handed an agent a record past one it never delivered."""


@dataclass
class OffsetGuard:
    """Stops the worker when an agent's input skips offsets; drops records seen before.

    faust 0.15 can drop records it fetched while a partition was paused for table
    recovery and go on with later ones (``make chaos``: after a kill -9 and restart,
    input offsets 67-200 of three partitions never reached the agent; the commit then
    stays at the gap, so the lag never drains). Processing past such a gap would count
    later reviews before earlier ones. So the agent raises instead: the batch is not
    processed, nothing past the gap is committed, the orchestrator restarts the worker
    and it reads from the committed offset, in order. Not even one offset may be skipped:
    ``make chaos`` lost input offset 85 of a partition when one was allowed (for a
    transaction marker). Input written by transactional producers has such markers:
    ``is_enabled`` off (TRENDSTREAM_CHECK_INPUT_GAPS=false) is for it, and for the
    score-batch topic under exactly_once.

    It can also hand the same offsets over twice around its start-up seek (``make
    chaos``, exactly-once: offsets 87-110 delivered, then from 89 again). With
    ``skips_seen`` a record below the next expected offset is dropped: it was processed
    by this worker already, or committed with its outputs before it started.
    """

    is_enabled: bool = True
    skips_seen: bool = False
    committed: Any = None  # tp -> the consumer's committed offset (faust's own view)
    expected: dict[tuple[str, int], int] = field(default_factory=dict)

    def reset(self) -> None:
        """After a rebalance positions move legitimately: start over."""
        self.expected.clear()

    def check(self, events: list[faust.EventT]) -> list[faust.EventT]:
        """Raise on a gap; the events to process (all, or those not seen before)."""
        fresh = []
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            following = self.expected.get(tp)
            if following is None and self.committed is not None:
                following = self.committed(msg.tp)  # the first record since assignment
            if self.is_enabled and following is not None and msg.offset > following:
                msg_text = (f"input gap on {msg.topic}[{msg.partition}]: got offset "
                            f"{msg.offset}, offsets {following}..{msg.offset - 1} never "
                            "arrived (a faust bug after table recovery); stopping so that "
                            "a restart reads them in order")
                raise InputGapError(msg_text)
            if following is None or msg.offset >= following:
                self.expected[tp] = msg.offset + 1
                fresh.append(event)
            elif not self.skips_seen:
                fresh.append(event)
        return fresh


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
        canonical_url=settings.web_canonical_url,  # where other replicas reach /products
        table_cleanup_interval=3600.0, key_serializer="raw", value_serializer="raw",
        # Larger fetches feed the aggregate agent's big batches (measured: 6.5k -> 8.5k
        # scored reviews/s through the tables; faust's defaults are 1 MiB and unbounded).
        consumer_max_fetch_size=4 << 20, broker_max_poll_records=5000,
        # A crashed agent stops the worker (the orchestrator restarts it) instead of a
        # half-alive process that reports ready while one stage is dead.
        agent_supervisor=CrashingSupervisor,
        processing_guarantee=settings.processing_guarantee,
        consumer_group_instance_id=settings.group_instance_id,
        broker_credentials=faust_credentials(settings),
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
    trend_state = app.topic(s.topic(s.topic_trend_state), **raw)
    windows = app.Table(WINDOWS_TABLE, partitions=s.partitions, key_type=str,
                        value_type=bytes)  # raw bytes: our own compact encoding
    clocks = app.Table(CLOCKS_TABLE, partitions=s.partitions, key_type=str,
                       value_type=bytes)
    window_store, clock_store = TableStore(windows), TableStore(clocks)
    def committed(tp: Any) -> int | None:  # faust's own view
        return app.consumer._committed_offset.get(tp)

    # the internal topics have transaction markers (and aborted records) under
    # exactly_once: no gap check there then
    is_eos = s.processing_guarantee == "exactly_once"
    score_guard = OffsetGuard(is_enabled=s.check_input_gaps, skips_seen=is_eos,
                              committed=committed)
    aggregate_guard = OffsetGuard(is_enabled=s.check_input_gaps and not is_eos,
                                  skips_seen=is_eos, committed=committed)
    alert_guard = OffsetGuard(is_enabled=s.check_input_gaps and not is_eos,
                              skips_seen=is_eos, committed=committed)  # written like batches
    guards = (score_guard, aggregate_guard, alert_guard)
    aggregator = Aggregator(params=pipeline.params, model_id=pipeline.scorer.model_id,
                            allowed_lateness_ms=int(s.allowed_lateness_s * 1000),
                            evidence_k=s.evidence_top_k, windows=window_store,
                            clocks=clock_store,
                            expire_after_days=s.state_expire_after_days)

    cloud = Binding.from_settings(s) if s.cloudevents else None
    commits = BatchCommits(is_transactional=is_eos)
    pipeline.commits = commits

    async def send(topic: faust.TopicT, key: bytes | None, value: bytes | None,
                   partition: int, *, source: faust.TopicT, headers: Any = None) -> Any:
        if not commits.is_transactional:
            return await topic.send(key=key, value=value, partition=partition,
                                    headers=headers)
        # the producer of the input partition, whose offsets commit with the outputs
        # (faust's own choice misses the topics the app does not consume: BatchCommits)
        tid = commits.transactional_id(source.get_topic_name(), partition)
        return await app.producer.send(topic.get_topic_name(), key, value, partition, None,
                                       headers, transactional_id=tid)

    async def send_all(topic: faust.TopicT, items: list[tuple[str, bytes, int]], *,
                       source: faust.TopicT, wait: bool = True) -> None:
        # Every output goes to its input's partition (the key stays product_id): each
        # partition's outputs then belong to that partition's transaction in exactly-once
        # mode, and a review sent without a key still meets its product's state.
        name = topic.get_topic_name()
        futures = [await send(topic, k.encode(), v, p, source=source,
                              headers=cloud and cloud.headers(name, v)) for k, v, p in items]
        if wait:
            await asyncio.gather(*futures)  # delivered (acks=all) before the batch is acked

    async def send_states(items: list[tuple[StateRecord, int]]) -> None:
        name = trend_state.get_topic_name()
        futures = [await send(trend_state, r.product_id.encode(), r.value, p, source=batches,
                              headers=[*r.headers, *(cloud.headers(name, r.value) or []
                                                     if cloud else [])] or None)
                   for r, p in items]
        await asyncio.gather(*futures)

    async def score_and_send(stream: faust.StreamT, events: list[faust.EventT], *,
                             todo: list[faust.EventT] | None = None,
                             wait: bool = True) -> None:
        """Score ``todo`` (default: all events), send, and (exactly_once) commit ``events``."""
        records = [RawRecord(e.message.topic, e.message.partition, e.message.offset,
                             e.message.key, e.message.value) for e in
                   (events if todo is None else todo)]
        pipeline.stats.in_flight += 1
        started = time.monotonic()
        arrived = [e.message.time_in for e in events if e.message.time_in is not None]
        try:
            outputs, dead, compute_s = await _score_batch(pipeline, records)
            encoded = [(o.product_id, o.to_bytes(), o.source_partition) for o in outputs]
            by_partition: dict[int, list[bytes]] = {}
            for _, value, partition in encoded:
                by_partition.setdefault(partition, []).append(value)
            async with commits.sending(stream, events):
                await send_all(scores, encoded, source=reviews, wait=wait)
                futures = [await send(batches, None, score_batch_record(values), p,
                                      source=reviews) for p, values in by_partition.items()]
                if wait:
                    await asyncio.gather(*futures)
                await send_all(dlq, [(d.key or "", d.to_bytes(), d.partition) for d in dead],
                               source=reviews, wait=wait)
            pipeline.metrics.on_batch(
                size=len(records), queue_wait_s=started - min(arrived) if arrived else None,
                compute_s=compute_s, tokens=sum(o.n_tokens for o in outputs),
                busy_s=time.monotonic() - started)
        finally:
            pipeline.stats.in_flight -= 1

    if naive_scoring:
        @app.agent(reviews, concurrency=1, name="score")
        async def score_naive(stream: faust.StreamT) -> None:
            async for event in stream.events():  # as a plain faust agent: no wait for acks
                await score_and_send(stream, [event], wait=False)
    else:
        @app.agent(reviews, concurrency=1)
        async def score(stream: faust.StreamT) -> None:
            async for events in stream.take_events(s.batch_max_size,
                                                   within=s.batch_max_wait_s):
                async with commits.batch("score"):
                    await score_and_send(stream, events, todo=score_guard.check(events))

    async def aggregate_batch(stream: faust.StreamT, events: list[faust.EventT]) -> None:
        changes, found, dead, states = [], [], [], []
        for event in aggregate_guard.check(events):
            p = event.message.partition
            for result, rejected in _aggregate_record(pipeline, aggregator, event):
                changes += [(c.product_id, c.to_bytes(), p) for c in result.changes]
                found += [(a.product_id, a.to_bytes(), p) for a in result.alerts]
                dead += [(d.key or "", d.to_bytes(), d.partition) for d in rejected]
                states += [(r, p) for r in state_records(result)]
        # Order matters for a crash at any point (README, "Processing guarantees"):
        # outputs first, then the states that record them, then the clocks. A crash
        # before the states are written replays the batch and sends the same
        # event_ids again; a clock is never ahead of its products' states. trend-state
        # is an output: after the states, a crash would lose it (stream/trendstate.py).
        async with commits.sending(stream, events):
            await send_all(trends, changes, source=batches)
            await send_all(alerts, found, source=batches)
            await send_all(dlq, dead, source=batches)
            await send_states(states)
            aggregator.flush_states()  # one changelog write per changed product
            await window_store.delivered()
            aggregator.flush_clocks()
            await clock_store.delivered()
        pipeline.metrics.on_trend_events(len(changes))

    @app.agent(batches, concurrency=1)
    async def aggregate(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.aggregate_batch_max_records,
                                               within=s.batch_max_wait_s):
            async with commits.batch("aggregate"):
                await aggregate_batch(stream, events)

    if (hooks := pipeline.hooks) is not None:  # README, "Alert webhooks"
        @app.agent(alerts, concurrency=1)
        async def deliver_alerts(stream: faust.StreamT) -> None:
            # Webhooks are slow and outside Kafka: an agent of their own, so scoring and
            # aggregation never wait for them; a batch waits at most webhook_max_delivery_s,
            # and is cut short (its alerts re-queued) when a rebalance or stop suspends flow.
            async for events in stream.take_events(s.webhook_concurrency,
                                                   within=s.batch_max_wait_s):
                async with commits.batch("alerts", drains=False):
                    done = await hooks.deliver(  # HTTP outside the commit lock
                        [RawRecord(e.message.topic, e.message.partition, e.message.offset,
                                   e.message.key, e.message.value)
                         for e in alert_guard.check(events)],
                        should_stop=lambda: not app.flow_control.is_active())
                    pipeline.stats.on_dead(done.dead)
                    async with commits.sending(stream, events):
                        await send_all(alerts, done.requeue, source=alerts)
                        await send_all(dlq, [(d.key or "", d.to_bytes(), d.partition)
                                             for d in done.dead], source=alerts)

    if s.idle_tick_interval_s > 0:
        @app.timer(s.idle_tick_interval_s)
        async def tick() -> None:
            now_ms = int(time.time() * 1000)
            for tp in app.consumer.assignment():
                if tp.topic != batches.get_topic_name():
                    continue
                if commits.is_transactional:  # no transaction: an idle partition commits none
                    await app.producer.send_and_wait(
                        batches.get_topic_name(), TICK_KEY, tick_record(now_ms),
                        tp.partition, None, None)
                else:
                    await batches.send(key=TICK_KEY, value=tick_record(now_ms),
                                       partition=tp.partition)

    guard_of = {reviews.get_topic_name(): score_guard,
                batches.get_topic_name(): aggregate_guard}

    def positions() -> dict[Any, tuple[int, int]]:
        """Assigned partitions of the two pipeline inputs: (next offset to process,
        highwater). The alert input is left out: a webhook may take minutes."""
        try:
            assignment = app.consumer.assignment()
        except ConsumerNotStarted:  # the first moments of start-up
            return {}
        found = {}
        for tp in assignment:
            guard = guard_of.get(tp.topic)
            highwater = app.consumer.highwater(tp)
            if guard is None or highwater is None or highwater < 0:
                continue
            done = guard.expected.get((tp.topic, tp.partition)) or committed(tp) or 0
            found[tp] = (done, highwater)
        return found

    if s.stall_exit_after_s > 0:
        watch = StallWatch(after_s=s.stall_exit_after_s)

        @app.timer(max(1.0, s.stall_exit_after_s / 6))
        async def stall_check() -> None:
            if app.in_recovery or not app.tables.recovery.completed.is_set():
                watch.reset()
                return
            if stalled := watch.stalled(positions(), time.monotonic()):
                log.error("stalled: %s have records waiting and no progress for %.0f s "
                          "(a faust consumer stall); exiting for the orchestrator to "
                          "restart the worker (at-least-once: nothing is lost)",
                          stalled, s.stall_exit_after_s)
                logging.shutdown()
                os._exit(3)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        aggregator.forget_partitions()
        for guard in guards:
            guard.reset()

    @app.on_partitions_assigned.connect
    async def _assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        commits.install(app)
        for guard in guards:
            guard.reset()

    pipeline.metrics.lag = lambda: {(tp.topic, tp.partition): max(0, highwater - done)
                                    for tp, (done, highwater) in positions().items()}
    pipeline.metrics.input_topic = reviews.get_topic_name()
    pipeline.metrics.is_ready = lambda: bool(readiness(app, pipeline)["ready"])
    _add_pages(app, pipeline)
    add_product_page(app, windows, params=pipeline.params, model_id=pipeline.scorer.model_id,
                     partitions=s.partitions,
                     is_recovered=lambda: readiness(app, pipeline)["tables_recovered"])
    return app


async def _score_batch(pipeline: Pipeline, records: list[RawRecord]
                       ) -> tuple[list[ReviewScore], list[DeadLetter], float]:
    """Scores, dead letters and the seconds spent in the tokenizer and ONNX Runtime."""
    s = pipeline.settings
    started = time.perf_counter()
    latest = datetime.now(UTC) + timedelta(seconds=s.max_future_s)
    prepared = prepare(records, max_event_bytes=s.max_event_bytes,
                       max_raw_chars=s.dlq_max_raw_chars, latest_ts=latest)
    loop = asyncio.get_running_loop()
    computing = time.perf_counter()
    outputs, unscorable = await loop.run_in_executor(pipeline.executor, partial(
        score_prepared, prepared, pipeline.scorer.score, model_id=pipeline.scorer.model_id,
        max_raw_chars=s.dlq_max_raw_chars))
    compute_s = time.perf_counter() - computing
    dead = prepared.dead + unscorable
    if pipeline.stats.batches < s.chaos_slow_batches:  # testing only: make chaos
        await asyncio.sleep(s.chaos_score_delay_s)
    pipeline.stats.on_batch(consumed=len(records), scored=len(outputs), dead=dead,
                            unknown_fields=prepared.unknown_fields,
                            seconds=time.perf_counter() - started)
    return outputs, dead, compute_s


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
        self._pending: list[Any] = []

    async def delivered(self) -> None:
        """Wait until every write so far is acknowledged by the broker (acks=all)."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    def get(self, key: str) -> bytes | None:
        value = self.table.data.get(key)
        return None if value is None else bytes(value)

    def put(self, partition: int, key: str, value: bytes) -> None:
        self.table.data[key] = value
        self._pending.append(self.table.send_changelog(partition, key, value))

    def delete(self, partition: int, key: str) -> None:
        self.table.data.pop(key, None)
        self._pending.append(self.table.send_changelog(partition, key, None,
                                                       value_serializer="raw"))

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
        hooks = {} if pipeline.hooks is None else {"webhooks": pipeline.hooks.counts.as_dict()}
        return web_view.json({**pipeline.stats.as_dict(), "model_id": pipeline.scorer.model_id,
                              "provider": pipeline.scorer.provider,
                              "variant": pipeline.scorer.variant.precision, **hooks})

    @app.page("/metrics")
    async def metrics(web_view: Any, request: Any) -> Any:
        return web_view.bytes(pipeline.metrics.render(), content_type=CONTENT_TYPE)

    del healthz, readyz, stats, metrics  # registered on the app by the decorators


def readiness(app: faust.App, pipeline: Pipeline) -> dict[str, Any]:
    """Ready = model warm, partitions assigned, table recovery finished."""
    try:
        assigned = len(app.consumer.assignment())
    except ConsumerNotStarted:  # the first moments of start-up
        assigned = 0
    recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
    return {"ready": pipeline.is_warm and assigned > 0 and recovered,
            "model_warm": pipeline.is_warm, "partitions_assigned": assigned,
            "tables_recovered": recovered}
