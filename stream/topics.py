"""Create the app's topics on the cluster (partitions and retention from settings)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    """The app's external topics, prefixed."""
    return [settings.topic(t) for t in (settings.topic_reviews, settings.topic_scores,
                                         settings.topic_trends, settings.topic_dlq)]


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
        wanted = [NewTopic(name, settings.partitions, settings.replication_factor,
                           topic_configs=config)
                  for name in topic_names(settings) if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
            log.info("created topics %s partitions=%d", [t.name for t in wanted],
                     settings.partitions)
        return [t.name for t in wanted]
    finally:
        await admin.close()


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
