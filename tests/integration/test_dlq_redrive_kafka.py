"""`trendstream dlq redrive` after a fix: a too-large review, dead-lettered, is scored once
the limit is raised and the letter redriven; a dry run sends nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from stream import dlq
from stream.settings import Settings

from .helpers import process_records, read_topic, start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration


def test_redrive_republishes_the_original_record_after_a_fix(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    env = unique_env(kafka_bootstrap, tiny_model_dir, TRENDSTREAM_MAX_EVENT_BYTES="2048")
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    base = {"product_id": "p1", "ts": "2017-03-01T10:00:00Z", "rating": 5}
    small = dict(base, review_id="small", text="Works well.")
    big = dict(base, review_id="big", text="Long and detailed, " * 150)  # ~2.9 kB
    records = [(b"p1", json.dumps(r).encode()) for r in (small, big)]
    process_records(env, records, tmp_path / "before.log")
    assert asyncio.run(dlq.summary(settings))["by_reason"] == {"too_large": 1}

    dry = asyncio.run(dlq.redrive(settings, dlq.Selection(reasons=frozenset({"too_large"})),
                                  dry_run=True))
    assert (dry.selected, dry.redriven) == (1, 0)
    fixed = {**env, "TRENDSTREAM_MAX_EVENT_BYTES": "8192"}  # the fix
    worker = start_worker(fixed, tmp_path / "after.log")
    try:
        worker.wait_ready()
        report = asyncio.run(dlq.redrive(
            settings, dlq.Selection(reasons=frozenset({"too_large"}))))
        assert report.as_dict() == {"selected": 1, "redriven": 1, "skipped": {},
                                    "dry_run": False}
        wait_for(lambda: (worker.get("/stats") or {}).get("accepted") == 1, timeout_s=60,
                 what="the redriven review aggregated")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    scored = [json.loads(v)["review_id"] for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("review-scores"))]
    assert sorted(scored) == ["big", "small"]
    none = asyncio.run(dlq.redrive(settings, dlq.Selection(reasons=frozenset({"late"}))))
    assert (none.selected, none.redriven) == (0, 0)
