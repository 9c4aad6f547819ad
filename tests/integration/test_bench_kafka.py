"""The broker half of `trendstream bench` on the tiny model, with small counts.

Checks that each run's numbers are derived from what the broker stored: every review
scored once, latencies joined to their input records, state loaded through the
changelog, ratios computed from the measured rates.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stream import benchkafka as bk
from stream.bench import AGGREGATE_COPIES, DEFAULT_DATA, prescored, ratios
from stream.benchstate import state_memory
from stream.replay import load_sorted, plan
from stream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, tiny_model_dir: Path) -> Settings:
    return Settings(kafka_bootstrap=kafka_bootstrap, model_dir=tiny_model_dir,
                    ort_intra_op_threads=1, batch_max_size=16)


def test_pipeline_naive_and_latency_runs_account_for_every_review(
        settings: Settings, tmp_path: Path) -> None:
    """450 reviews (the first 50 to warm up) through the batching worker and the naive one;
    latency joined per review. (With 150 the tiny model's naive agent could write every
    timed score within the 100 ms burst window after the warm-up: no span to time.)"""
    rows = load_sorted(DEFAULT_DATA)[:450]
    records = plan(rows, malformed=0, seed=0)
    warmup = frozenset(str(r["review_id"]) for r in rows[:50])
    pipe = asyncio.run(bk.saturation(settings, records, tmp_path, "pipeline", broker_pid=None,
                                     warmup_ids=warmup))
    naive = asyncio.run(bk.saturation(settings, records, tmp_path, "naive", broker_pid=None,
                                      worker_args=("--naive-scoring",), warmup_ids=warmup))
    assert pipe["scored"] == naive["scored"] == 450
    assert pipe["warmup_reviews"] == 50
    assert naive["mean_batch_size"] == 1.0 and pipe["mean_batch_size"] > 1.0
    assert pipe["reviews_per_s"] > 0 and naive["reviews_per_s"] > 0
    assert pipe["worker_peak_rss_bytes"] > 50 * 2**20
    assert pipe["cpu"]["seconds"]["worker"] > 0
    lat = asyncio.run(bk.latency(settings, records[:60], tmp_path, rate_per_s=60.0,
                                 broker_pid=None))
    assert lat["produce_to_score"]["n"] == 60
    assert 0 < lat["produce_to_score"]["p50_ms"] <= lat["produce_to_score"]["p99_ms"] < 30_000
    report = {"raw": {"best": {"reviews_per_s": 2 * pipe["reviews_per_s"]}}, "raw_best": "best",
              "pipeline": pipe, "naive": naive}
    assert ratios(report)["pipeline_over_raw"] == pytest.approx(0.5, abs=1e-3)


def test_aggregate_through_tables_writes_one_record_per_product_per_batch(
        settings: Settings, tmp_path: Path) -> None:
    """2,000 pre-scored reviews: all accepted; far fewer changelog records than reviews."""
    rows = load_sorted(DEFAULT_DATA)[:2000 // AGGREGATE_COPIES]
    scores = [(s.product_id.encode(), s.to_bytes())
              for s in prescored(rows, "tiny", copies=AGGREGATE_COPIES)]
    out = asyncio.run(bk.aggregate_tables(settings, scores, tmp_path, broker_pid=None))
    assert out["events"] == len(scores)
    assert 0 < out["windows_changelog_records"] < len(scores) / 2


def test_state_of_many_products_is_restored_through_the_changelog(
        settings: Settings, tmp_path: Path) -> None:
    """3,000 synthesized products load through recovery; new reviews for them are accepted
    (not dead-lettered as late: the restored clocks and states are the synthesized ones)."""
    out = asyncio.run(state_memory(settings, tmp_path, n_products=3000, broker_pid=None,
                                   model_id="tiny"))
    assert out["reviews"] == 90_000 and out["new_reviews_accepted"] == 1000
    assert out["state_bytes_per_product"] < 1000
    assert out["peak_rss_bytes"] >= out["rss_when_ready_bytes"] > 50 * 2**20
