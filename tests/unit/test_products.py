"""Which partition holds a product (vs faust's table router), and the product page's summary."""

from __future__ import annotations

import json
import random
from datetime import date, timedelta

from aiokafka.partitioner import DefaultPartitioner
from faust.app.router import Router

from stream.app import _faust_app
from stream.products import key_partition, owner_url, summary
from stream.settings import Settings
from stream.topics import WINDOWS_TABLE
from stream.trends import DetectorParams, close_through
from stream.windows import ProductState

BASE_DAY = 17_167  # 2017-01-01


def _ids(n: int) -> list[str]:
    rng = random.Random(7)
    alphabet = "abcXYZ0129-_.é中🙂"
    ids = [f"prod-{i}" for i in range(n // 2)]
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            for _ in range(n - len(ids))]
    return ids


def test_key_partition_is_kafkas_default_partitioner_on_the_product_id() -> None:
    """For 10,000 ids and 1, 6, 7 and 12 partitions: the partition aiokafka's producer picks."""
    partitioner = DefaultPartitioner()
    for partitions in (1, 6, 7, 12):
        all_p = list(range(partitions))
        for pid in _ids(10_000):
            assert key_partition(pid, partitions) == partitioner(pid.encode(), all_p, all_p)


def test_fausts_table_router_would_hash_a_json_key_and_pick_other_partitions() -> None:
    """faust routes on the table's serialized key: JSON for key_type=str, so not the review's."""
    app = _faust_app(Settings(app_id="routing-unit-test"))
    table = app.Table(WINDOWS_TABLE, partitions=6, key_type=str, value_type=bytes)
    partitioner = DefaultPartitioner()
    all_p = list(range(6))
    ids = _ids(2_000)
    serialized = {pid: Router._get_serialized_key(table, pid) for pid in ids}
    assert all(key == json.dumps(pid).encode() for pid, key in serialized.items())
    differ = sum(partitioner(serialized[pid], all_p, all_p) != key_partition(pid, 6)
                 for pid in ids)
    assert differ > len(ids) * 0.7  # about 5 in 6: the router would ask the wrong worker


def test_owner_url_reads_fausts_assignor_metadata() -> None:
    """url -> topic -> active partitions; a partition nobody holds (a rebalance) is None."""
    metadata = {"http://a:1": {"w-changelog": [0, 2], "other": [1]},
                "http://b:2": {"w-changelog": [1]}}
    assert owner_url(metadata, "w-changelog", 2) == "http://a:1"
    assert owner_url(metadata, "w-changelog", 1) == "http://b:2"
    assert owner_url(metadata, "w-changelog", 3) is None


def test_summary_gives_the_state_the_change_that_entered_it_and_the_last_signals() -> None:
    """2 reviews/day for 180 days, closed through day 192: falling since the change at 192."""
    state = ProductState("p1", 4, category="toys")
    for d in range(180):
        for i in range(2):
            state.add((f"r{d:05d}-{i}", "h", 0.5, 4.0), BASE_DAY + d)
    params = DetectorParams()
    out = close_through(state, BASE_DAY + 192, params, model_id="m", evidence_k=3)
    falling = out.changes[-1]
    state.add(("late-day-review", "h", 0.5, 4.0), BASE_DAY + 194)  # after the last close
    got = summary(state.to_bytes(), params=params, model_id="m")
    start = date(2017, 1, 1)
    # window of the close of day 192: days 103-192; held: days 103-179 (2 a day) + day 194
    assert got == {
        "product_id": "p1", "state": "falling", "since": "2017-07-13T00:00:00Z",
        "last_event_id": falling.event_id, "is_alerted": False, "category": "toys",
        "window": {"window_start": "2017-04-14T00:00:00Z",
                   "window_end": "2017-07-13T00:00:00Z",
                   "reviews_held": 77 * 2 + 1, "days_held": 78,
                   "first_review_day": "2017-04-14", "last_review_day": "2017-07-14",
                   "reviews_after_window_end": 1},
        "signals": falling.signals.model_dump(mode="json"),
        "model_id": "m", "detector_version": "volume-v1",
    }
    assert falling.window_end.date() == start + timedelta(days=193) == date(2017, 7, 13)
    assert (falling.signals.recent_count, falling.signals.baseline_count) == (34, 120)
