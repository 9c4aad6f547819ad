"""Create the app's topics on the cluster (partitions and retention from settings)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream.kafkaconf import client_options
from stream.settings import Settings

log = logging.getLogger(__name__)


WINDOWS_TABLE = "product-windows"
CLOCKS_TABLE = "partition-clocks"
TABLES = (WINDOWS_TABLE, CLOCKS_TABLE)
WEEK_MS = 7 * 86_400_000


def topic_names(settings: Settings) -> list[str]:
    """The app's external topics, prefixed (the compacted ones included)."""
    return [settings.topic(t) for t in (
        settings.topic_reviews, settings.topic_scores, settings.topic_score_batches,
        settings.topic_trends, settings.topic_alerts, settings.topic_dlq,
        settings.topic_trend_state)]


def compacted_names(settings: Settings) -> list[str]:
    """The app's compacted output topics (the latest record per product), prefixed."""
    return [settings.topic(settings.topic_trend_state)]


def changelog_names(settings: Settings) -> list[str]:
    """The faust table changelog topics (faust's naming: <app_id>-<table>-changelog)."""
    return [f"{settings.app_id}-{table}-changelog" for table in TABLES]


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                               client_id=f"{settings.app_id}-admin", request_timeout_ms=30_000,
                               **client_options(settings))


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names that were created."""
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        config = {"retention.ms": str(settings.topic_retention_ms)}
        compacted = {"cleanup.policy": "compact"}
        # Changelogs too: created here, before faust starts, so its agents never race
        # the metadata of a topic it has just created (PartitionsMismatch with 0 partitions).
        # trend-state: a tombstone (a forgotten product) stays readable for a week, so a
        # subscriber that was down for days still sees it (README, "Current state ...")
        latest = {**compacted, "delete.retention.ms": str(WEEK_MS)}
        wanted = [NewTopic(name, settings.partitions, settings.replication_factor,
                           topic_configs=latest if name in compacted_names(settings)
                           else config) for name in topic_names(settings)]
        wanted += [NewTopic(name, settings.partitions, settings.replication_factor,
                            topic_configs=compacted) for name in changelog_names(settings)]
        wanted = [t for t in wanted if t.name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
            log.info("created topics %s partitions=%d", [t.name for t in wanted],
                     settings.partitions)
        await _wait_visible(admin, [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str],
                        timeout_s: float = 30.0) -> None:
    """Wait until the cluster's metadata lists every created topic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while missing := set(names) - set(await admin.list_topics()):
        if loop.time() > deadline:
            msg = f"topics {sorted(missing)} not visible {timeout_s:.0f} s after creation"
            raise TimeoutError(msg)
        await asyncio.sleep(0.2)


async def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete topics (the demo cleans up after itself)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def seed_offsets(settings: Settings) -> None:
    """Commit the log start of every input partition the consumer group has no offset for.

    faust 0.15 starts fetching before it seeks the stream partitions to their committed
    offsets; a partition with none keeps the fetch position, and the records fetched in
    between are dropped (measured by ``make chaos``: offsets 60-241 of three partitions
    skipped after a kill -9, the commit then held at the gap for good). With an offset
    committed the seek re-reads them. A group with live members refuses such a commit:
    then they have committed already, and this is skipped.
    """
    sources = [settings.topic(settings.topic_reviews), settings.topic(settings.topic_score_batches)]
    if settings.webhooks:  # the alert delivery agent's input
        sources.append(settings.topic(settings.topic_alerts))
    tps = [TopicPartition(t, p) for t in sources for p in range(settings.partitions)]
    admin = admin_client(settings)
    await admin.start()
    try:
        for attempt in range(60):  # a new broker creates __consumer_offsets on first use
            try:
                known = await admin.list_consumer_group_offsets(settings.app_id)
                break
            except KafkaError as exc:
                if not exc.retriable or attempt == 59:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    missing = [tp for tp in tps if tp not in known or known[tp].offset < 0]
    if not missing:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=settings.app_id, enable_auto_commit=False,
                                **client_options(settings))
    await consumer.start()
    try:
        consumer.assign(missing)
        start = await consumer.beginning_offsets(missing)
        await consumer.commit(start)
    except KafkaError as exc:
        log.info("offsets not seeded (%r): the group is active", exc)
        return
    finally:
        await consumer.stop()
    log.info("seeded offsets of %d input partitions at their log start", len(missing))
