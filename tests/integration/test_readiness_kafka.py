"""/readyz is false while the tables recover, true after; /healthz answers throughout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stream.benchstate import load_states
from stream.settings import Settings
from stream.topics import ensure_topics

from .helpers import start_worker, unique_env

pytestmark = pytest.mark.integration


def test_readyz_is_false_during_table_recovery_then_true(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    env = unique_env(kafka_bootstrap, tiny_model_dir)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    asyncio.run(ensure_topics(settings))
    loaded = asyncio.run(load_states(settings, 40_000, days=30, reviews_per_day=1))
    assert loaded["products"] == 40_000
    worker = start_worker(env, tmp_path / "worker.log")
    pages, alive = [], []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            page = worker.get("/readyz")
            if page is not None:
                pages.append(page)
                alive.append((worker.get("/healthz") or {}).get("alive"))
                if page["ready"]:
                    break
            time.sleep(0.05)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    recovering = [p for p in pages if p["model_warm"] and not p["tables_recovered"]]
    assert recovering and not any(p["ready"] for p in recovering), pages[:3]
    assert pages[-1] == {"ready": True, "model_warm": True,
                         "partitions_assigned": pages[-1]["partitions_assigned"],
                         "tables_recovered": True}
    assert pages[-1]["partitions_assigned"] > 0 and all(alive)
