"""``trendstream bench --products N``: worker memory holding N products' window state.

Rather than scoring N x 30 reviews, the bench synthesizes each product's state with the
worker's own :class:`~stream.windows.ProductState` (review_ids, content keys, scores and
ratings included: the dedup index and the evidence come from them), writes the encoded
records into the windows table's changelog topic on the partition the product's reviews
would use, and starts a worker: it loads them through faust's changelog recovery, as
after a restart. The JSON reports the worker's resident memory once it is ready, and
after it has taken a batch of new reviews for some of those products.

Density (stated in the JSON): ``days`` consecutive days with ``reviews_per_day`` reviews
each, review_ids of 16 characters, a category, a trend state.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from stream.events import MS_PER_DAY, ReviewScore
from stream.settings import Settings
from stream.topics import changelog_names
from stream.windows import TRENDS, PartitionClock, ProductState

LAST_DAY: Final = 19_000  # 2022-01-08: the synthesized windows end here
CATEGORIES: Final = ("Electronics", "Home", "Toys", "Books")


def synth_state(i: int, partition: int, *, days: int, reviews_per_day: int,
                rng: random.Random) -> ProductState:
    """Product ``i``'s state: ``days`` days up to LAST_DAY, evaluated through LAST_DAY."""
    state = ProductState(product_id=product_id(i), partition=partition,
                         trend=TRENDS[i % 3], category=CATEGORIES[i % len(CATEGORIES)],
                         evaluated_through_day=LAST_DAY)
    for day in range(LAST_DAY - days + 1, LAST_DAY + 1):
        for k in range(reviews_per_day):
            review_id = f"r{i:08d}{day % 10_000:04d}{k:03d}"  # 16 characters
            content = hashlib.blake2b(review_id.encode(), digest_size=8).hexdigest()
            state.add((review_id, content, rng.random(), float(rng.randint(1, 5))), day)
    return state


def product_id(i: int) -> str:
    return f"product-{i:08d}"


async def load_states(settings: Settings, n_products: int, *, days: int,
                      reviews_per_day: int) -> dict[str, Any]:
    """Write every synthesized state, and each partition's clock, into the changelogs."""
    from stream.backtestio import kafka_partition_of

    partition_of = kafka_partition_of(settings.partitions)
    windows, clocks = changelog_names(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                linger_ms=50, max_batch_size=1 << 20)
    await producer.start()
    rng = random.Random(1)
    started = time.monotonic()
    total_bytes = 0
    try:
        for i in range(n_products):
            state = synth_state(i, partition_of(product_id(i)), days=days,
                                reviews_per_day=reviews_per_day, rng=rng)
            raw = state.to_bytes()
            total_bytes += len(raw)
            await producer.send(windows, key=_table_key(state.product_id), value=raw,
                                partition=state.partition)
        end_ms = (LAST_DAY + 1) * MS_PER_DAY
        for p in range(settings.partitions):
            clock = PartitionClock(stream_time_ms=end_ms, closed_through_day=LAST_DAY)
            await producer.send(clocks, key=_table_key(str(p)), value=clock.to_bytes(),
                                partition=p)
        await producer.flush()
    finally:
        await producer.stop()
    return {"products": n_products, "days": days, "reviews_per_day": reviews_per_day,
            "reviews": n_products * days * reviews_per_day, "review_id_chars": 16,
            "state_bytes": total_bytes,
            "state_bytes_per_product": round(total_bytes / max(1, n_products), 1),
            "load_seconds": round(time.monotonic() - started, 1)}


def _table_key(key: str) -> bytes:
    """A str key as faust writes it to a changelog (the table's key_type str: JSON)."""
    return json.dumps(key).encode()


def new_reviews(n: int, n_products: int, *, model_id: str) -> list[tuple[bytes, bytes]]:
    """Scored reviews of the day after LAST_DAY for the first ``n`` products (no day
    closes: the allowed lateness keeps the watermark behind)."""
    ts = datetime.fromtimestamp((LAST_DAY + 1) * MS_PER_DAY / 1000 + 3600, tz=UTC)
    out = []
    for i in range(min(n, n_products)):
        score = ReviewScore(review_id=f"new-{i:011d}", product_id=product_id(i), ts=ts,
                            score=0.5, is_text_used=True, unk_ratio=0.0, n_tokens=12,
                            is_truncated=False, rating=4.0, category="Electronics",
                            content_sha256=hashlib.sha256(str(i).encode()).hexdigest()[:16],
                            model_id=model_id, source_partition=0, source_offset=i)
        out.append((score.product_id.encode(), score.to_bytes()))
    return out


async def state_memory(settings: Settings, log_dir: Path, *, n_products: int, days: int = 30,
                       reviews_per_day: int = 1, broker_pid: int | None,
                       model_id: str) -> dict[str, Any]:
    """Load N products' state through the changelog; the worker's RSS when ready and after."""
    from stream import benchkafka as bk

    async with bk.Run(settings, log_dir, "state", broker_pid=broker_pid) as run:
        loaded = await load_states(run.settings, n_products, days=days,
                                   reviews_per_day=reviews_per_day)
        ready_s = run.start_worker(ready_timeout_s=3600)
        assert run.worker is not None
        rss_ready = bk.rss_bytes(run.worker.proc.pid)
        batch = new_reviews(1000, n_products, model_id=model_id)
        await bk.produce_score_batches(run.settings, batch)
        stats = await run.wait_stats(lambda s: s["accepted"] + s["dead_lettered_total"] >=
                                     len(batch), timeout_s=600)
        rss_after = bk.rss_bytes(run.worker.proc.pid)
        peak = run.peak_rss()
    return {**loaded, "ready_after_s": round(ready_s, 1), "rss_when_ready_bytes": rss_ready,
            "rss_after_new_reviews_bytes": rss_after, "peak_rss_bytes": peak,
            "new_reviews_accepted": stats["accepted"],
            "new_reviews_dead_lettered": stats["dead_lettered"],
            "expire_after_days": settings.state_expire_after_days}
