"""The example subscriber's rule: latest position wins, event_ids applied once, any topic order."""

from __future__ import annotations

import importlib.util
import itertools
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from types import ModuleType

from stream.aggregation import Aggregator, DictStore
from stream.events import ReviewScore, TrendState
from stream.settings import REPO_ROOT
from stream.trends import DetectorParams
from stream.trendstate import state_records

START = datetime(2017, 1, 1, tzinfo=UTC)


def _example() -> ModuleType:
    path = REPO_ROOT / "examples" / "inventory_subscriber.py"
    spec = importlib.util.spec_from_file_location("inventory_subscriber", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sub = _example()


def _records() -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(topic kind, key, value, headers) of a real aggregation: A rises, falls, is forgotten,
    then comes back and rises again; on both topics, trends first, as the worker writes."""
    agg = Aggregator(params=DetectorParams(), model_id="m", allowed_lateness_ms=0,
                     evidence_k=3, windows=DictStore(), clocks=DictStore(),
                     expire_after_days=100)
    days = [("A", d, i) for d in range(180) for i in range(2)]
    days += [("B", d, 0) for d in range(400)]
    days += [("A", d, i) for d in range(360, 400) for i in range(3)]  # back after expiry
    days.sort(key=lambda x: (x[1], x[0], x[2]))
    out = []
    offsets = itertools.count()
    for pid, day, i in days:
        score = ReviewScore(review_id=f"{pid}-{day}-{i}", product_id=pid,
                            ts=START + timedelta(days=day, hours=12), score=0.5,
                            is_text_used=True, unk_ratio=0.0, n_tokens=10, is_truncated=False,
                            rating=4.0, content_sha256="h", model_id="m", source_partition=0,
                            source_offset=next(offsets))
        result = agg.on_score(0, score)
        agg.flush()
        out += [("trends", c.product_id.encode(), c.to_bytes(), []) for c in result.changes]
        out += [("trend-state", r.product_id.encode(), r.value, list(r.headers))
                for r in state_records(result)]
    return out


def _plan(records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
          ) -> tuple[dict[str, tuple[str | None, float | None]], dict[str, int]]:
    db = sqlite3.connect(":memory:")
    db.executescript(sub.SCHEMA)
    outcomes: dict[str, int] = {}
    for kind, key, value, headers in records:
        outcome = sub.apply(db, sub.decode(kind, key, value, headers), base=100.0)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    rows = db.execute("SELECT product_id, state, reorder_point FROM products")
    return {r[0]: (r[1], r[2]) for r in rows}, outcomes


def test_both_topics_in_any_order_give_the_same_plan_and_each_change_once() -> None:
    """Worker order, trend-state first, trends first, reversed, and everything twice: same plan."""
    records = _records()
    trends = [r for r in records if r[0] == "trends"]
    states = [r for r in records if r[0] == "trend-state"]
    assert sum(r[2] is None for r in states) == 1  # A forgotten once, in between
    plan, outcomes = _plan(records)
    final_a = TrendState.model_validate_json(states[-1][2] or b"")
    assert final_a.product_id == "A" and final_a.state == "rising"
    assert plan["A"] == ("rising", 125.0)
    assert plan["B"] == ("stable", 100.0)
    assert outcomes == {"applied": len(trends) + 1, "duplicate": len(trends)}
    for order in (states + trends, trends + states, records[::-1], records + records):
        assert _plan(order)[0] == plan


def test_trend_state_alone_bootstraps_the_same_plan_as_following_trends() -> None:
    """A late joiner reading only trend-state (compacted: the last record per key) agrees."""
    records = _records()
    latest = {r[1]: r for r in records if r[0] == "trend-state"}
    assert _plan(list(latest.values()))[0] == _plan(records)[0]


def test_a_tombstone_read_after_the_comeback_does_not_hide_it() -> None:
    """A's comeback on trends, then the older tombstone (another topic, read late): stale."""
    records = _records()
    tombstone = next(r for r in records if r[0] == "trend-state" and r[2] is None)
    rest = [r for r in records if r is not tombstone]
    plan, outcomes = _plan([*rest, tombstone])
    assert plan["A"] == ("rising", 125.0) and outcomes["stale"] == 1


def test_reorder_rule() -> None:
    """base x 1.25 rising, x 0.8 falling, x 1 stable."""
    assert [sub.reorder_point(s, 80.0) for s in ("rising", "stable", "falling")] == \
        [100.0, 80.0, 64.0]
