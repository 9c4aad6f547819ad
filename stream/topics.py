"""Create the app's topics on the cluster (partitions and retention from settings)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

log = logging.getLogger(__name__)


WINDOWS_TABLE = "product-windows"
CLOCKS_TABLE = "partition-clocks"
TABLES = (WINDOWS_TABLE, CLOCKS_TABLE)


def topic_names(settings: Settings) -> list[str]:
    """The app's external topics, prefixed."""
    return [settings.topic(t) for t in (
        settings.topic_reviews, settings.topic_scores, settings.topic_score_batches,
        settings.topic_trends, settings.topic_alerts, settings.topic_dlq)]


def changelog_names(settings: Settings) -> list[str]:
    """The faust table changelog topics (faust's naming: <app_id>-<table>-changelog)."""
    return [f"{settings.app_id}-{table}-changelog" for table in TABLES]


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                               client_id=f"{settings.app_id}-admin", request_timeout_ms=30_000)


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
        wanted = [NewTopic(name, settings.partitions, settings.replication_factor,
                           topic_configs=config) for name in topic_names(settings)]
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
