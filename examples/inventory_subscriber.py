"""Inventory subscriber: a reorder plan per product from TrendStream's trend events.

    python examples/inventory_subscriber.py --db plan.sqlite [--base 100] [--print-plan]

A small standalone consumer (aiokafka, stdlib sqlite3) of ``trends`` that bootstraps from
the compacted ``trend-state`` topic, so it starts with every product's current trend
instead of replaying history. Connection and topic names come from the worker's own
settings (``TRENDSTREAM_KAFKA_BOOTSTRAP``, ``TRENDSTREAM_TOPIC_PREFIX``, the security
settings; README, "Example: inventory subscriber").

**Reorder rule.** Each product's reorder point is ``base`` x 1.25 while it is rising,
x 0.8 while it is falling and x 1 while stable. A product with no trend record is
stable; a product the worker forgot (a trend-state tombstone) leaves the plan (base).

**Handoff from trend-state to trends, and why nothing is lost or applied twice.** On its
first start (an empty store) it notes the end offsets of ``trends`` first, then reads
``trend-state`` from its beginning and ``trends`` from those noted offsets, and it keeps
reading both. Every record carries its product's *position*: the ``window_end`` of the
change (a TrendChange and the TrendState it enters share it and their event_id), or for a
tombstone the header ``trendstream-window-end``. Positions grow with every change of a
product, so a record is applied only when it is later than what the store holds:

* a change before the noted offsets is in trend-state, or its TrendState arrives there
  later (the worker writes it after the TrendChange), or after a worker crash it is
  sent again past the noted offsets: it is never lost;
* the same change seen on both topics, a worker's exact re-send, or a record re-read
  after this process crashed has the same event_id (skipped as a duplicate) or a
  position that is not later (skipped as stale): it is never applied twice; the order in
  which the two topics are read does not matter.

**Store.** One SQLite file holds the plan, the event_ids seen and the next offset of
every partition, written in ONE transaction per fetched batch. Offsets are not committed
to Kafka (no consumer group): after a crash the store says exactly which records were
applied, so a record is applied once even between a write and an offset commit. The
store needs the worker's history to stay put: after a replay under a new app_id, delete
it; a subscriber down for longer than trend-state's ``delete.retention.ms`` (7 days)
may miss a tombstone, and should start afresh too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from stream.events import TrendChange
from stream.kafkaconf import client_options
from stream.settings import Settings, load_settings
from stream.topics import admin_client
from stream.trendstate import Position, change_position, position_of

FACTORS: Final = {"rising": 1.25, "stable": 1.0, "falling": 0.8}
CRASH_EXIT: Final = 70  # --crash-after-records (tests): exit code of the simulated crash

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY,
    state TEXT,                 -- NULL: forgotten by the worker
    window_end TEXT NOT NULL,   -- position: ISO-8601 UTC of the record applied last
    is_forgotten INTEGER NOT NULL,
    event_id TEXT,
    reorder_point REAL
);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Update:
    """One trend record, decoded: a product's new state (None: forgotten) at a position."""

    product_id: str
    position: Position
    state: str | None
    event_id: str


def reorder_point(state: str, base: float) -> float:
    """The documented rule: base x 1.25 rising, x 0.8 falling, x 1 stable."""
    return round(base * FACTORS[state], 6)


def decode(topic_kind: str, key: bytes | None, value: bytes | None,
           headers: list[tuple[str, bytes]] | None) -> Update:
    """A ``trends`` record (TrendChange) or a ``trend-state`` record (TrendState/tombstone)."""
    if topic_kind == "trends":
        change = TrendChange.model_validate_json(value or b"")
        return Update(change.product_id, change_position(change.window_end),
                      change.new_state, change.event_id)
    state, position = position_of(value, headers)
    if state is not None:
        return Update(state.product_id, position, state.state, state.last_event_id)
    product_id = (key or b"").decode()
    return Update(product_id, position, None, f"forgotten:{product_id}:{position.window_end}")


def apply(db: sqlite3.Connection, update: Update, *, base: float) -> str:
    """Apply one update inside the caller's transaction: applied, duplicate or stale."""
    if db.execute("SELECT 1 FROM seen WHERE event_id = ?", (update.event_id,)).fetchone():
        return "duplicate"
    db.execute("INSERT INTO seen (event_id) VALUES (?)", (update.event_id,))
    row = db.execute("SELECT window_end, is_forgotten FROM products WHERE product_id = ?",
                     (update.product_id,)).fetchone()
    if row is not None and (row[0], bool(row[1])) >= update.position.key():
        return "stale"
    point = None if update.state is None else reorder_point(update.state, base)
    db.execute("INSERT OR REPLACE INTO products VALUES (?, ?, ?, ?, ?, ?)",
               (update.product_id, update.state, update.position.window_end,
                int(update.position.is_forgotten), update.event_id, point))
    return "applied"


def open_store(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN / COMMIT below
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def read_plan(path: Path) -> dict[str, dict[str, Any]]:
    """The plan in a store: product -> state, reorder point, position, event_id."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT product_id, state, reorder_point, window_end, event_id "
                          "FROM products WHERE state IS NOT NULL ORDER BY product_id")
        return {r[0]: {"state": r[1], "reorder_point": r[2], "since": r[3], "event_id": r[4]}
                for r in rows}
    finally:
        db.close()


def read_counts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT name, n FROM counts"))
    finally:
        db.close()


def read_offsets(path: Path) -> dict[tuple[str, int], int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(t, p): o for t, p, o in db.execute("SELECT * FROM offsets")}
    finally:
        db.close()


class Subscriber:
    """Reads trends and trend-state into the store; see the module docstring."""

    def __init__(self, settings: Settings, db: sqlite3.Connection, *, base: float,
                 crash_after_records: int | None = None) -> None:
        self.settings, self.db, self.base = settings, db, base
        self.kinds = {settings.topic(settings.topic_trends): "trends",
                      settings.topic(settings.topic_trend_state): "trend-state"}
        self.crash_after_records = crash_after_records
        self.records_seen = 0
        self.consumer: AIOKafkaConsumer  # made in run(): aiokafka wants a running loop

    async def partitions(self) -> list[TopicPartition]:
        """Every partition of both topics (they must exist: the worker creates them)."""
        admin = admin_client(self.settings)
        await admin.start()
        try:
            described = await admin.describe_topics(list(self.kinds))
        finally:
            await admin.close()
        missing = sorted(t["topic"] for t in described if t["error_code"] or not t["partitions"])
        if missing:
            raise SystemExit(f"topics {missing} do not exist: start the worker first")
        return sorted(TopicPartition(t["topic"], p["partition"])
                      for t in described for p in t["partitions"])

    async def start_positions(self) -> dict[TopicPartition, int]:
        """Stored offsets; on the first start: trends' end offsets, trend-state's start."""
        tps = await self.partitions()
        stored = {TopicPartition(t, p): o for t, p, o in self.db.execute(
            "SELECT topic, partition, next_offset FROM offsets")}
        trends = [tp for tp in tps if self.kinds[tp.topic] == "trends"]
        if not stored:  # first start: note trends' ends BEFORE reading trend-state
            ends = await self.consumer.end_offsets(trends)
            stored = {**{tp: 0 for tp in tps}, **ends}
            self._save_offsets(stored)
        begins = await self.consumer.beginning_offsets(tps)
        return {tp: max(stored.get(tp, 0), begins[tp]) for tp in tps}

    def _save_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                            [(tp.topic, tp.partition, o) for tp, o in offsets.items()])
        self.db.execute("COMMIT")

    async def run(self, *, until_caught_up: bool = False) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
            enable_auto_commit=False, isolation_level="read_committed",
            **client_options(self.settings))
        await self.consumer.start()
        try:
            start = await self.start_positions()
            self.consumer.assign(list(start))
            for tp, offset in start.items():
                self.consumer.seek(tp, offset)
            while True:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
                if batch:
                    self._apply_batch(batch)
                elif until_caught_up and await self._caught_up(list(start)):
                    return
        finally:
            await self.consumer.stop()

    def _apply_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        counts: dict[str, int] = {}
        self.db.execute("BEGIN")
        try:
            for tp, records in batch.items():
                for record in records:
                    update = decode(self.kinds[tp.topic], record.key, record.value,
                                    list(record.headers or ()))
                    outcome = apply(self.db, update, base=self.base)
                    counts[outcome] = counts.get(outcome, 0) + 1
                    self._maybe_crash()
                self.db.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                                (tp.topic, tp.partition, records[-1].offset + 1))
            self.db.executemany("INSERT INTO counts VALUES (?, ?) ON CONFLICT(name) DO "
                                "UPDATE SET n = n + excluded.n", list(counts.items()))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _maybe_crash(self) -> None:
        self.records_seen += 1
        if self.crash_after_records is not None and \
                self.records_seen >= self.crash_after_records:
            os._exit(CRASH_EXIT)  # tests: die inside a transaction, as kill -9 would

    async def _caught_up(self, tps: list[TopicPartition]) -> bool:
        ends = await self.consumer.end_offsets(tps)
        positions = [await self.consumer.position(tp) for tp in tps]
        return all(position >= ends[tp] for tp, position in zip(tps, positions, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="SQLite store (created)")
    parser.add_argument("--base", type=float, default=100.0,
                        help="reorder point of a stable product (default 100)")
    parser.add_argument("--until-caught-up", action="store_true",
                        help="exit 0 once both topics are read to their ends")
    parser.add_argument("--print-plan", action="store_true",
                        help="print the plan as JSON and exit (no Kafka)")
    parser.add_argument("--crash-after-records", type=int, default=None,
                        help=argparse.SUPPRESS)  # tests: simulated crash mid-transaction
    args = parser.parse_args(argv)
    if args.print_plan:
        print(json.dumps(read_plan(args.db), indent=1, sort_keys=True))
        return 0
    subscriber = Subscriber(load_settings(), open_store(args.db), base=args.base,
                            crash_after_records=args.crash_after_records)
    asyncio.run(subscriber.run(until_caught_up=args.until_caught_up))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
