"""Two workers of one app against the real broker: trend-state, /products from either worker,
and the example inventory subscriber (a crash mid-stream, re-sends, a late joiner)."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.aggregation import Aggregator, DictStore
from stream.artifact import read_manifest
from stream.events import ReviewScore, TrendChange, TrendState
from stream.products import key_partition, summary
from stream.replay import plan, produce
from stream.settings import REPO_ROOT, Settings
from stream.topics import ensure_topics
from stream.trendstate import WINDOW_END_HEADER, state_records
from stream.workerproc import WorkerProcess, free_port

from .helpers import start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration
START = datetime(2017, 1, 1, tzinfo=UTC)
PARTITIONS = 6
EXPIRE_DAYS = 100
SUBSCRIBER = REPO_ROOT / "examples" / "inventory_subscriber.py"
CRASH_AFTER = 9  # records: the first subscriber dies inside its transaction there
# signal fields that do not depend on the model's scores (the simulation scores 0.5)
VOLUME_SIGNALS = ("recent_count", "baseline_count", "recent_rate_per_day",
                  "baseline_rate_per_day", "volume_ratio", "days_since_last_review")

Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def _products() -> dict[str, tuple[int, list[int]]]:
    """Per product: its partition and its reviews per day from day 0; two per partition,
    and one with an awkward id.

    launch (even partitions): 2/day for days 0-179, then silent: rises, settles, falls and
    is forgotten (100 days after its last review); steady: 1/day for days 0-399 (rises,
    settles); late (odd partitions): 1/day for days 0-359 then 4/day: rising at the end.
    """
    ids: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for i in itertools.count():
        pid = f"sku-{i}"
        bucket = ids[key_partition(pid, PARTITIONS)]
        if len(bucket) < 2:
            bucket.append(pid)
        if all(len(b) == 2 for b in ids.values()):
            break
    out = {}
    for p, (first, second) in ids.items():
        out[first] = (p, [1] * 400)
        out[second] = (p, [2] * 180 if p % 2 == 0 else [1] * 360 + [4] * 40)
    odd = "sku/ü 1%"  # a "/", a space, a "%" and UTF-8 in an id: the page still finds it
    out[odd] = (key_partition(odd, PARTITIONS), [1] * 400)
    return out


def _reviews() -> list[dict[str, Any]]:
    rows = []
    for pid, (_, counts) in _products().items():
        for day, per_day in enumerate(counts):
            rows += [{"review_id": f"{pid}-{day:03d}-{i}", "product_id": pid,
                      "ts": (START + timedelta(days=day, hours=12)).strftime(
                          "%Y-%m-%dT%H:%M:%SZ"),
                      "text": f"Review {i} of day {day}: works fine.", "rating": 4.0,
                      "title": None, "source": "test", "category": "test"} for i in range(per_day)]
    return sorted(rows, key=lambda r: (r["ts"], r["review_id"]))


@dataclass
class Simulated:
    """What the pure aggregator makes of the same reviews, partition by partition."""

    changes: list[TrendChange] = field(default_factory=list)
    latest: dict[str, bytes | None] = field(default_factory=dict)  # trend-state, compacted
    windows: dict[str, bytes] = field(default_factory=dict)


def _simulate(rows: list[dict[str, Any]], model_dir: Path) -> Simulated:
    params = read_manifest(model_dir).detector
    model_id = read_manifest(model_dir).model_id
    windows = DictStore()
    agg = Aggregator(params=params, model_id=model_id, allowed_lateness_ms=0, evidence_k=5,
                     windows=windows, clocks=DictStore(), expire_after_days=EXPIRE_DAYS)
    out = Simulated(windows=windows)
    for offset, row in enumerate(rows):
        p = key_partition(row["product_id"], PARTITIONS)
        result = agg.on_score(p, ReviewScore(
            review_id=row["review_id"], product_id=row["product_id"],
            ts=datetime.fromisoformat(row["ts"]), score=0.5, is_text_used=True, unk_ratio=0.0,
            n_tokens=10, is_truncated=False, rating=4.0, category="test", content_sha256="h",
            model_id=model_id, source_partition=p, source_offset=offset))
        agg.flush()
        out.changes += result.changes
        out.latest.update({r.product_id: r.value for r in state_records(result)})
    return out


async def _read(bootstrap: str, topic: str) -> list[Record]:
    """Every record of a topic with its headers: (partition, offset, key, value, headers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Record] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out += [(tp.partition, r.offset, r.key, r.value, list(r.headers or ()))
                        for r in records]
        return sorted(out, key=lambda r: (r[0], r[1]))
    finally:
        await consumer.stop()


async def _resend(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Exact copies on the same partitions: what a worker re-sends after a crash."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, _, key, value, headers in records:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition,
                                         headers=headers or None)
    finally:
        await producer.stop()


async def _ends(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps))
                .items()}
    finally:
        await consumer.stop()


def _get(url: str) -> tuple[int, dict[str, Any]]:
    base, _, pid = url.partition("/products/")
    url = f"{base}/products/{urllib.parse.quote(pid, safe='')}" if pid else url
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _subscriber(env: dict[str, str], db: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SUBSCRIBER), "--db", str(db), *args],
                            env={**os.environ, **env}, cwd=REPO_ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _sub() -> Any:
    """The example as a module (its store readers and rule)."""
    spec = importlib.util.spec_from_file_location("inventory_subscriber_it", SUBSCRIBER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    env: dict[str, str]
    settings: Settings
    workers: list[WorkerProcess]
    simulated: Simulated
    trends: list[Record]
    states: list[Record]
    dir: Path
    first_db: Path
    first_exit_codes: list[int]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tiny_model_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Both workers process the reviews while the first subscriber follows (and crashes)."""
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("trend-state")
    env = unique_env(kafka_bootstrap, tiny_model_dir, TRENDSTREAM_ALLOWED_LATENESS_S="0",
                     TRENDSTREAM_STATE_EXPIRE_AFTER_DAYS=str(EXPIRE_DAYS),
                     TRENDSTREAM_PARTITIONS=str(PARTITIONS))
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    asyncio.run(ensure_topics(settings))
    rows = _reviews()
    simulated = _simulate(rows, tiny_model_dir)
    db = tmp / "first.sqlite"
    first = _subscriber(env, db, tmp / "subscriber.log", "--crash-after-records",
                        str(CRASH_AFTER))
    workers = [start_worker({**env, "TRENDSTREAM_WEB_PORT": str(port)}, tmp / f"w{i}.log")
               for i, port in enumerate((env["TRENDSTREAM_WEB_PORT"], free_port()))]
    try:
        wait_for(lambda: all((w.get("/readyz") or {}).get("ready") for w in workers),
                 timeout_s=240, what="both workers ready")
        seconds = {"ready": time.monotonic() - started}
        asyncio.run(produce(settings, plan(rows, malformed=0, seed=0),
                            topic=settings.topic("reviews")))
        n_states = len(simulated.changes) + sum(v is None for v in simulated.latest.values())
        trends_topic, states_topic = (settings.topic(settings.topic_trends),
                                      settings.topic(settings.topic_trend_state))
        wait_for(lambda: sum(asyncio.run(_ends(kafka_bootstrap, [states_topic])).values())
                 >= n_states, timeout_s=300, what=f"{n_states} trend-state records")
        wait_for(lambda: sum((w.get("/stats") or {}).get("accepted", 0) for w in workers)
                 >= len(rows), timeout_s=60, what="every review aggregated")
        seconds["processed"] = time.monotonic() - started
        trends = asyncio.run(_read(kafka_bootstrap, trends_topic))
        states = asyncio.run(_read(kafka_bootstrap, states_topic))
        exit_codes = [first.wait(timeout=120)]  # the simulated crash, mid-transaction
        print(f"trend-state run: {seconds} s; {len(rows)} reviews, {len(trends)} trend "
              f"events, {len(states)} trend-state records")
        restarted = _subscriber(env, db, tmp / "subscriber.log")
        yield Run(env, settings, workers, simulated, trends, states, tmp, db, exit_codes,
                  seconds)
        restarted.terminate()
        restarted.wait(timeout=30)
    finally:
        first.kill()
        for w in workers:
            assert w.stop() == 0, w.log_tail()


def test_trend_state_holds_each_change_and_a_tombstone_for_the_forgotten(run: Run) -> None:
    """trends = the simulated changes once each; trend-state = TrendState.from_change of each
    (byte for byte), in order, then tombstones for the forgotten products."""
    changes = [TrendChange.model_validate_json(v or b"") for _, _, _, v, _ in run.trends]
    assert sorted(c.event_id for c in changes) == \
        sorted(c.event_id for c in run.simulated.changes)
    by_id = {c.event_id: c for c in changes}
    latest: dict[str, Record] = {}
    for record in run.states:
        pid = (record[2] or b"").decode()
        assert record[0] == key_partition(pid, PARTITIONS)  # the product's input partition
        if record[3] is not None:
            state = TrendState.model_validate_json(record[3])
            assert record[3] == TrendState.from_change(by_id[state.last_event_id]).to_bytes()
        latest[pid] = record
    assert {pid: r[3] is None for pid, r in latest.items()} == \
        {pid: v is None for pid, v in run.simulated.latest.items()}
    forgotten = [pid for pid, r in latest.items() if r[3] is None]
    assert len(forgotten) == 3  # the launch products (even partitions)
    assert all(dict(latest[pid][4])[WINDOW_END_HEADER] == b"2017-10-08T00:00:00Z"
               for pid in forgotten)


def test_products_page_answers_the_same_from_either_worker(run: Run) -> None:
    """Each product asked of both workers: one answer, from its owner; both own some."""
    urls = [w.url for w in run.workers]
    owners = set()
    for pid in _products():
        answers = [_get(f"{url}/products/{pid}") for url in urls]
        (status, body), (status2, body2) = answers
        assert status == status2 and body["worker"] == body2["worker"], answers
        owner = body["worker"]
        owners.add(owner)
        raw = run.simulated.windows.get(pid)
        if raw is None:  # forgotten
            assert status == 404 and "unknown product" in body["error"], body
            assert body == body2
            continue
        assert status == 200, body
        assert {k: v for k, v in body.items() if k != "routed_by"} == \
            {k: v for k, v in body2.items() if k != "routed_by"}
        asked_other = [b["routed_by"] for b in (body, body2) if b["routed_by"] is not None]
        assert asked_other == [u for u in urls if u != owner]  # the non-owner forwarded
        expected = summary(raw, params=read_manifest(Path(run.env["TRENDSTREAM_MODEL_DIR"]))
                           .detector, model_id=body["model_id"])
        signals = expected.pop("signals")
        assert {k: body[k] for k in expected} == expected
        assert {k: body["signals"][k] for k in VOLUME_SIGNALS} == \
            {k: signals[k] for k in VOLUME_SIGNALS}
        state = TrendState.model_validate_json(run.simulated.latest[pid] or b"")
        assert (body["state"], body["last_event_id"]) == (state.state, state.last_event_id)
        assert body["since"] == state.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert body["partition"] == key_partition(pid, PARTITIONS)
        shown = next(b for b in (body, body2) if b["routed_by"])
    print("a forwarded answer:", json.dumps(shown))
    assert owners == set(urls)
    for url in urls:
        status, body = _get(f"{url}/products/no-such-sku")
        assert status == 404 and body["product_id"] == "no-such-sku"


def test_subscriber_survives_a_crash_and_resends_and_a_late_joiner_agrees(run: Run) -> None:
    """Crash mid-transaction, restart, re-sent copies: the plan of the deduplicated changes;
    a subscriber started after everything bootstraps the same plan from trend-state."""
    sub = _sub()
    bootstrap = run.settings.kafka_bootstrap
    trends_topic = run.settings.topic(run.settings.topic_trends)
    states_topic = run.settings.topic(run.settings.topic_trend_state)
    assert run.first_exit_codes == [sub.CRASH_EXIT]
    latest = {}
    for record in run.states:
        latest[record[2]] = record
    resent = run.trends[:3] + [r for r in latest.values() if r[3] is not None][:2]
    asyncio.run(_resend(bootstrap, trends_topic, run.trends[:3]))
    asyncio.run(_resend(bootstrap, states_topic, resent[3:]))
    ends = asyncio.run(_ends(bootstrap, [trends_topic, states_topic]))
    wait_for(lambda: sub.read_offsets(run.first_db) == ends, timeout_s=60,
             what="the restarted subscriber caught up")
    # the plan the deduplicated changes call for: the latest change of each product, less
    # the products whose latest trend-state record is a tombstone
    last: dict[str, TrendChange] = {}
    for _, _, _, value, _ in run.trends:
        change = TrendChange.model_validate_json(value or b"")
        if change.product_id not in last or change.window_end > last[change.product_id] \
                .window_end:
            last[change.product_id] = change
    expected = {pid: {"state": c.new_state, "reorder_point": sub.reorder_point(c.new_state, 100),
                      "since": c.window_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "event_id": c.event_id}
                for pid, c in last.items() if latest[pid.encode()][3] is not None}
    assert sub.read_plan(run.first_db) == expected
    counts = sub.read_counts(run.first_db)
    n_tombstones = sum(r[3] is None for r in run.states)
    assert counts == {"applied": len(run.trends) + n_tombstones,
                      "duplicate": len(run.trends) + len(resent)}  # each record counted once
    late_db = run.dir / "late.sqlite"
    late = _subscriber(run.env, late_db, run.dir / "late.log", "--until-caught-up")
    assert late.wait(timeout=120) == 0, (run.dir / "late.log").read_text()[-2000:]
    assert sub.read_plan(late_db) == expected
    # it noted the ends of trends first and read trend-state alone (not compacted yet here)
    assert sum(sub.read_counts(late_db).values()) == len(run.states) + len(resent[3:])
    assert {k: v for k, v in sub.read_offsets(late_db).items() if k[0] == trends_topic} == \
        {k: v for k, v in ends.items() if k[0] == trends_topic}
