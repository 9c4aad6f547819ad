"""Records on the internal review-score-batches topic that did not come from our scorer:
each bad item reaches the DLQ with its reason, the good items of the same record count."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from stream.events import DeadLetter
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.windows import ProductState

from .helpers import read_topic, start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration


def _score(review_id: str, **extra: object) -> dict[str, object]:
    return {"review_id": review_id, "product_id": "p-1", "ts": "2020-03-01T12:00:00Z",
            "score": 0.7, "is_text_used": True, "unk_ratio": 0.0, "n_tokens": 9,
            "is_truncated": False, "rating": 4.0, "content_sha256": "ab" * 8,
            "model_id": "x", "source_partition": 0, "source_offset": 1, **extra}


def test_bad_batch_records_and_items_are_dead_lettered(kafka_bootstrap: str,
                                                       tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    """Not JSON, not an array, and an array with one bad item among two good ones."""
    env = unique_env(kafka_bootstrap, tiny_model_dir)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    asyncio.run(ensure_topics(settings))
    mixed = json.dumps([_score("good-1"), _score("bad", score="high"), _score("good-2")])
    records = [b"{not json", b'{"an": "object"}', mixed.encode()]
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        asyncio.run(_produce(settings, records))
        stats = wait_for(lambda: (s := worker.get("/stats")) and s["accepted"] +
                         s["dead_lettered_total"] >= 5 and s, timeout_s=60,
                         what="5 items accounted for")
        assert stats["accepted"] == 2, json.dumps(stats)
        assert (worker.get("/readyz") or {}).get("ready")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    dead = [DeadLetter.model_validate_json(v) for _, _, v in
            read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert sorted((d.reason, d.review_id or "") for d in dead) == [
        ("invalid_json", ""), ("wrong_type", ""), ("wrong_type", "bad")]
    assert all(d.stage == "aggregate" and d.topic == settings.topic("review-score-batches")
               for d in dead)
    bad = next(d for d in dead if d.review_id == "bad")
    assert json.loads(bad.raw_value or "")["score"] == "high"  # the item, not the record
    changelog = read_topic(kafka_bootstrap, f"{settings.app_id}-product-windows-changelog")
    state = ProductState.from_bytes(changelog[-1][2] or b"")
    assert sorted(r[0] for b in state.buckets.values() for r in b) == ["good-1", "good-2"]


async def _produce(settings: Settings, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topic("review-score-batches"), value=value,
                                         partition=0)
    finally:
        await producer.stop()
