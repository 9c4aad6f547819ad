"""The worker through the real broker emits exactly the backtest's trendstream calls."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from stream import backtestio
from stream.events import TrendChange
from stream.replay import replay
from stream.settings import REPO_ROOT, Settings
from stream.topics import ensure_topics

from .helpers import read_topic, start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration
DATA = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
PRODUCTS = ("AVpidLjVilAPnD_xEVpI", "AVqVGZNvQMlgsOJE6eUY", "AV1YnR7wglJLPUi8IJmi",
            "AVsRjfwAU2_QcyX9PHqe", "AVpfpK8KLJeJML43BCuD")


def _subset(path: Path) -> int:
    """Five real products of the bundled set (2,148 reviews), as a review file."""
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        lines = [line for line in f if json.loads(line)["product_id"] in PRODUCTS]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def test_worker_trend_events_equal_backtest_calls(kafka_bootstrap: str, tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    """Replayed into Kafka, the worker's TrendChange event_ids are the backtest's, one for one."""
    env = unique_env(kafka_bootstrap, tiny_model_dir)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    reviews = tmp_path / "reviews.jsonl"
    n = _subset(reviews)
    inputs = backtestio.review_inputs(reviews, settings, model_dir=tiny_model_dir,
                                      observation_end="product", cache_dir=tmp_path / "cache")
    predicted = backtestio.run_methods(inputs, settings, sweep=False)["runs"]["trendstream"][0]
    assert len(predicted) >= 10  # enough calls for the comparison to mean something

    asyncio.run(ensure_topics(settings))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        asyncio.run(replay(settings, reviews))
        wait_for(lambda: (s := worker.get("/stats")) and s["accepted"] >= n, timeout_s=180,
                 what="all reviews aggregated")
        wait_for(lambda: (worker.get("/stats") or {}).get("trend_events_total", 0)
                 >= len(predicted), timeout_s=60, what="the predicted number of trend events")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    emitted = [TrendChange.model_validate_json(v) for _, _, v in
               read_topic(kafka_bootstrap, settings.topic("trends"))]
    assert sorted(c.event_id for c in emitted) == sorted(c.event_id for c in predicted)
    by_id = {c.event_id: c for c in predicted}
    assert all((e.product_id, e.new_state) == (by_id[e.event_id].product_id,
                                               by_id[e.event_id].state) for e in emitted)
