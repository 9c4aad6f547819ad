"""``trendstream chaos``: crash, restart, rebalance and starve real workers on a real broker.

The harness plays the orchestrator: it starts worker processes, disrupts them (kill -9,
SIGTERM, scale up and down, a broker restart, a slowed scorer), restarts what it
killed (and anything that died on its own), waits until every input record is
processed and committed, then reads the output topics and the state changelog
(read_committed) and compares them with an undisturbed reference run of the same
input (:mod:`stream.chaoscheck`). One JSON summary, one table.

Input: the newest ``--reviews`` bundled Datafiniti reviews in event-time order (re-timed
copies with new review_ids are appended when the file has fewer). Every scenario gets
its own topics and consumer group on one broker the harness starts (and restarts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.benchkafka import env_of, read_all
from stream.chaoscheck import Outcome, compare, passed
from stream.errors import StreamError
from stream.hostile import hostile_plan
from stream.replay import Record, load_sorted, plan, produce
from stream.settings import REPO_ROOT, Settings
from stream.topics import WINDOWS_TABLE, changelog_names, delete_topics, ensure_topics
from stream.workerproc import WorkerProcess, free_port

log = logging.getLogger(__name__)

DEFAULT_DATA = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
SCENARIO_TIMEOUT_S = 900.0
HOSTILE_EVENTS = 10_000
STALL_S = 150.0  # lag unchanged this long while workers run: the scenario failed (stalled)


def chaos_rows(path: Path, n: int) -> list[dict[str, Any]]:
    """The newest ``n`` reviews of a file in replay order; re-timed copies (new ids, shifted
    past the end) are appended when the file has fewer."""
    rows = load_sorted(path)
    out = rows[-n:]
    copy = 1
    while len(out) < n:
        first = datetime.fromisoformat(rows[0]["ts"])
        shift = datetime.fromisoformat(out[-1]["ts"]) - first + timedelta(days=1)
        out += [dict(r, review_id=f"{r['review_id']}~{copy}",
                     ts=(datetime.fromisoformat(r["ts"]) + shift).strftime("%Y-%m-%dT%H:%M:%SZ"))
                for r in rows[:n - len(out)]]
        copy += 1
    return out


class Broker:
    """The harness's own single-node broker (deploy/kafka/kafka.sh), restartable in place."""

    def __init__(self, base: Path) -> None:
        self.run_dir, self.data_dir = base / "run", base / "data"
        self.bootstrap = ""

    def _sh(self, cmd: str, timeout_s: float = 300) -> str:
        args = ["bash", str(KAFKA_SH), cmd, "--run-dir", str(self.run_dir)]
        if cmd == "up":
            args += ["--data-dir", str(self.data_dir)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env={k: v for k, v in os.environ.items()
                                   if k != "TRENDSTREAM_KAFKA_BOOTSTRAP"})
        if proc.returncode != 0:
            raise StreamError(f"kafka.sh {cmd} failed: {proc.stderr[-2000:]}")
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

    def up(self) -> str:
        self.bootstrap = self._sh("up")
        return self.bootstrap

    def down(self) -> None:
        self._sh("down", 120)

    def pid(self) -> int:
        return int((self.run_dir / "kafka.pid").read_text())


class Probe:
    """Committed offsets and lag of one consumer group, as the broker reports them."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                         request_timeout_ms=10_000)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                         enable_auto_commit=False,
                                         isolation_level="read_committed")

    async def __aenter__(self) -> Probe:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    def tps(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(self.s.topic(topic), p) for p in range(self.s.partitions)]

    async def committed(self, topic: str) -> dict[int, int]:
        # bounded: with a transaction open, the broker may hold the answer back
        offsets = await asyncio.wait_for(
            self.admin.list_consumer_group_offsets(self.s.app_id), 15)
        name = self.s.topic(topic)
        return {tp.partition: max(0, meta.offset) for tp, meta in offsets.items()
                if tp.topic == name}

    async def lag(self, topic: str) -> int:
        """Records past the group's committed offsets (control records included)."""
        tps = self.tps(topic)
        end = await self.consumer.end_offsets(tps)
        done = await self.committed(topic)
        return sum(end[tp] - done.get(tp.partition, 0) for tp in tps)

    async def unprocessed(self, topic: str) -> int:
        """Data records past the committed offsets (read_committed: transaction markers,
        which a transactional producer leaves after its last record, do not count)."""
        tps = self.tps(topic)
        done = await self.committed(topic)
        end = await self.consumer.end_offsets(tps)
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, done.get(tp.partition, 0))
        found, deadline = 0, time.monotonic() + 10
        while [tp for tp in tps if await self.consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                return max(found, 1)
            found += sum(len(r) for r in (await self.consumer.getmany(timeout_ms=300)).values())
        return found


@dataclass
class Fleet:
    """The worker processes of one scenario; a dead one that was not stopped on purpose is
    restarted (that is what an orchestrator does) and counted."""

    settings: Settings
    log_dir: Path
    label: str
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    ready_after_s: list[float] = field(default_factory=list)
    unplanned_restarts: int = 0
    planned_down: set[str] = field(default_factory=set)
    starts: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)

    async def start(self, name: str, **overrides: Any) -> float:
        # Like a StatefulSet: each replica keeps its name (static group membership), so
        # a restarted one takes its partitions back without waiting out the dead member.
        # Its web port stays too: faust's assignor checks a returning member's URL.
        port = self.ports.setdefault(name, free_port())
        settings = self.settings.model_copy(update={
            "web_port": port, "group_instance_id": f"{self.settings.app_id}-{name}",
            **overrides})
        path = self.log_dir / f"{self.label}-{name}.log"
        self.starting.add(name)
        try:
            return await self._start(name, settings, path)
        finally:
            self.starting.discard(name)

    async def _start(self, name: str, settings: Settings, path: Path) -> float:
        for attempt in range(10):
            self.starts += 1
            proc = WorkerProcess(env_of(settings), path)
            self.workers[name] = proc
            self.planned_down.discard(name)
            try:
                ready = await asyncio.to_thread(proc.wait_ready, 300.0)
            except StreamError:
                if proc.proc.poll() is None or attempt == 9:
                    raise  # not ready in time, or it keeps dying: the scenario fails
                log.warning("%s: worker %s exited with %s before it was ready; restarting",
                            self.label, name, proc.proc.returncode)
                self.unplanned_restarts += 1
                proc.stop()
                continue
            self.ready_after_s.append(round(ready, 2))
            return ready
        raise AssertionError("unreachable")

    def kill9(self, name: str) -> None:
        self.planned_down.add(name)
        proc = self.workers[name]
        proc.proc.kill()
        proc.proc.wait()
        proc.stop()  # closes the log

    async def term(self, name: str, timeout_s: float = 120) -> tuple[int, float]:
        self.planned_down.add(name)
        started = time.monotonic()
        code = await asyncio.to_thread(self.workers.pop(name).stop, timeout_s)
        return code, round(time.monotonic() - started, 2)

    async def watch(self) -> None:
        """Restart workers that died on their own (e.g. while the broker was down)."""
        while True:
            for name, proc in list(self.workers.items()):
                if name not in self.planned_down and name not in self.starting and \
                        proc.proc.poll() is not None:
                    log.warning("%s: worker %s exited with %s; restarting", self.label, name,
                                proc.proc.returncode)
                    self.unplanned_restarts += 1
                    proc.stop()
                    try:
                        await self.start(name)
                    except StreamError as exc:
                        log.warning("%s: restart of %s failed (%s); retrying", self.label,
                                    name, str(exc).splitlines()[0])
            await asyncio.sleep(0.5)

    async def wait_alive(self, name: str, timeout_s: float = 300) -> WorkerProcess:
        """The named worker once it runs and is ready (the watcher restarts a dead one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.workers.get(name)
            if proc is not None and proc.proc.poll() is None:
                try:
                    if ((await asyncio.to_thread(proc.get, "/readyz")) or {}).get("ready"):
                        return proc
                except StreamError:
                    pass
            await asyncio.sleep(0.2)
        raise StreamError(f"{self.label}: worker {name} not back in {timeout_s:.0f} s")

    async def stop_all(self) -> None:
        for name in list(self.workers):
            await self.term(name)


@dataclass
class Ctx:
    """What a scenario's disruption gets to work with."""

    fleet: Fleet
    probe: Probe
    broker: Broker
    rng: random.Random
    total: int
    notes: dict[str, Any] = field(default_factory=dict)

    async def progress(self) -> float:
        """Share of input records the group has committed."""
        try:
            return sum((await self.probe.committed(self.fleet.settings.topic_reviews))
                       .values()) / self.total
        except Exception:  # the broker may be down in the broker scenario
            return 0.0

    async def wait_progress(self, share: float, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while await self.progress() < share:
            if time.monotonic() > deadline:
                raise StreamError(f"{self.fleet.label}: progress stuck below {share:.0%}")
            await asyncio.sleep(0.2)


async def _reference(ctx: Ctx) -> None:
    await ctx.fleet.start("w1")


async def _kill9(ctx: Ctx, kills: int = 5) -> None:
    """kill -9 at seeded moments, each while a micro-batch is in flight and lag > 0."""
    await ctx.fleet.start("w1")
    done_kills, lags = 0, []
    for _ in range(kills):
        await asyncio.sleep(ctx.rng.uniform(0.3, 2.0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            worker = await ctx.fleet.wait_alive("w1")  # it may have stopped on its own
            try:
                stats = await asyncio.to_thread(worker.get, "/stats")
            except StreamError:
                continue
            if stats and stats["in_flight_batches"] > 0:
                break
            await asyncio.sleep(0.01)
        lag = await ctx.probe.lag(ctx.fleet.settings.topic_reviews)
        if lag == 0:
            break
        ctx.fleet.kill9("w1")
        done_kills += 1
        lags.append(lag)
        await ctx.fleet.start("w1")
    ctx.notes.update(kills=done_kills, lag_at_kill=lags)


async def _scale(ctx: Ctx) -> None:
    """1 -> 3 -> 1 worker processes: two rebalances while tables recover."""
    await ctx.fleet.start("w1")
    await ctx.wait_progress(0.15)
    await asyncio.gather(ctx.fleet.start("w2"), ctx.fleet.start("w3"))
    ctx.notes["scaled_up_at"] = round(await ctx.progress(), 3)
    await asyncio.sleep(ctx.rng.uniform(3, 6))
    codes = await asyncio.gather(ctx.fleet.term("w2"), ctx.fleet.term("w3"))
    ctx.notes.update(scaled_down_at=round(await ctx.progress(), 3),
                     scale_down_exit=[c for c, _ in codes])


async def _broker(ctx: Ctx) -> None:
    """Stop and restart the broker (same port, same data directory) mid-replay."""
    await ctx.fleet.start("w1")
    await ctx.wait_progress(0.25)
    started = time.monotonic()
    await asyncio.to_thread(ctx.broker.down)
    await asyncio.sleep(3)
    await asyncio.to_thread(ctx.broker.up)
    ctx.notes["broker_down_s"] = round(time.monotonic() - started, 1)


async def _slow(ctx: Ctx) -> None:
    """The first micro-batches are slowed while input keeps coming: lag builds, then drains."""
    await ctx.fleet.start("w1", chaos_score_delay_s=0.5, chaos_slow_batches=40)
    peak = 0
    while (lag := await ctx.probe.lag(ctx.fleet.settings.topic_reviews)) > 0 or \
            await ctx.progress() < 0.99:
        peak = max(peak, lag)
        await asyncio.sleep(0.5)
    ctx.notes.update(peak_lag=peak, lag_recovered=True)


async def _sigterm(ctx: Ctx) -> None:
    """SIGTERM mid-replay: the worker must drain and commit what it scored, exit 0."""
    await ctx.fleet.start("w1")
    await ctx.wait_progress(0.3)
    code, seconds = await ctx.fleet.term("w1")
    committed = await ctx.probe.committed(ctx.fleet.settings.topic_reviews)
    scores = await read_all(ctx.fleet.settings.kafka_bootstrap,
                            ctx.fleet.settings.topic(ctx.fleet.settings.topic_scores),
                            partitions=ctx.fleet.settings.partitions)
    have = {(r.partition, json.loads(r.value or b"{}")["source_offset"]) for r in scores}
    uncovered = sum(1 for p, end in committed.items() for o in range(end) if (p, o) not in have)
    ctx.notes.update(exit_code=code, drain_s=seconds, committed_without_score=uncovered,
                     committed_at=round(sum(committed.values()) / ctx.total, 3))
    await ctx.fleet.start("w1")


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Ctx], Awaitable[None]]
    guarantee: str = "at_least_once"
    paced_s: float | None = None  # produce the input over this long while it runs
    check: Callable[[dict[str, Any]], bool] = lambda notes: True


SCENARIOS = (
    Scenario("kill9_x5", _kill9, check=lambda n: n.get("kills") == 5),
    Scenario("scale_1_3_1", _scale, check=lambda n: n.get("scale_down_exit") == [0, 0]),
    Scenario("broker_restart", _broker),
    Scenario("slow_consumer", _slow, paced_s=25.0, check=lambda n: n.get("peak_lag", 0) > 0),
    Scenario("sigterm_drain", _sigterm, check=lambda n: n.get("exit_code") == 0
             and n.get("committed_without_score") == 0),
    Scenario("exactly_once_kill9_x5", _kill9, guarantee="exactly_once",
             check=lambda n: n.get("kills") == 5),
)


async def _run_scenario(scenario: Scenario, base: Settings, broker: Broker,
                        records: list[Record], log_dir: Path, seed: int) -> tuple[Outcome,
                                                                                 dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    settings = base.model_copy(update={
        "app_id": f"chaos-{scenario.name}-{run}".replace("_", "-"),
        "topic_prefix": f"chaos-{run}.", "processing_guarantee": scenario.guarantee,
        "kafka_bootstrap": broker.bootstrap})
    await ensure_topics(settings)
    topic = settings.topic(settings.topic_reviews)
    pace = None
    if scenario.paced_s:
        pace = [scenario.paced_s * i / len(records) for i in range(len(records))]
    else:
        await produce(settings, records, topic=topic)
    fleet = Fleet(settings, log_dir, scenario.name)
    started = time.monotonic()
    async with Probe(settings) as probe:
        ctx = Ctx(fleet, probe, broker, random.Random(seed), len(records))
        watcher = asyncio.create_task(fleet.watch())
        producer = asyncio.create_task(produce(settings, records, topic=topic, pace_s=pace)) \
            if pace else None
        try:
            await asyncio.wait_for(scenario.run(ctx), SCENARIO_TIMEOUT_S)
            if producer:
                await producer
            await _wait_done(ctx, started + SCENARIO_TIMEOUT_S)
            if "w1" in fleet.workers:
                ctx.notes["final_stats"] = await asyncio.to_thread(
                    fleet.workers["w1"].get, "/stats")
        finally:
            watcher.cancel()
            await fleet.stop_all()
    outcome = await read_outcome(settings)
    info = {"name": scenario.name, "guarantee": scenario.guarantee,
            "ready_after_s": max(fleet.ready_after_s), "ready_after_s_each": fleet.ready_after_s,
            "worker_starts": fleet.starts, "unplanned_restarts": fleet.unplanned_restarts,
            "duration_s": round(time.monotonic() - started, 1), **ctx.notes,
            "scenario_check": scenario.check(ctx.notes)}
    await delete_topics(settings, [settings.topic(settings.topic_reviews)])
    return outcome, info


async def _wait_done(ctx: Ctx, deadline: float) -> None:
    """Until every input record and every score batch is processed and committed (twice in
    a row, a commit interval apart)."""
    s, stable = ctx.fleet.settings, 0
    last, since = -1, time.monotonic()
    while stable < 2:
        if time.monotonic() > deadline:
            raise StreamError(f"{ctx.fleet.label}: not done before the deadline")
        try:
            lag = await ctx.probe.lag(s.topic_reviews)
            idle = lag == 0 and await ctx.probe.unprocessed(s.topic_score_batches) == 0
        except Exception as exc:  # broker restarting
            log.info("probe failed: %r", exc)
            lag, idle = -1, False
        if lag != last:
            last, since = lag, time.monotonic()
        elif lag > 0 and time.monotonic() - since > STALL_S:
            raise StreamError(f"{ctx.fleet.label}: stalled, {lag} records of lag unchanged "
                              f"for {STALL_S:.0f} s; {await _stall_report(ctx)}")
        stable = stable + 1 if idle else 0
        await asyncio.sleep(3.0)


async def _stall_report(ctx: Ctx) -> str:
    """What a stalled run looks like: offsets, and the input offsets scored, as runs."""
    s = ctx.fleet.settings
    tps = ctx.probe.tps(s.topic_reviews)
    end = await ctx.probe.consumer.end_offsets(tps)
    committed = await ctx.probe.committed(s.topic_reviews)
    scores = await read_all(s.kafka_bootstrap, s.topic(s.topic_scores), partitions=s.partitions)
    runs: dict[int, list[list[int]]] = {}
    for r in sorted(scores, key=lambda r: (r.partition, r.offset)):
        offset = json.loads(r.value or b"{}")["source_offset"]
        spans = runs.setdefault(r.partition, [])
        if spans and spans[-1][1] + 1 == offset:
            spans[-1][1] = offset
        else:
            spans.append([offset, offset])
    return json.dumps({"end": [end[tp] for tp in tps],
                       "committed": [committed.get(tp.partition) for tp in tps],
                       "scored_input_offsets": runs,
                       "stats": {n: w.get("/stats") for n, w in ctx.fleet.workers.items()
                                 if w.proc.poll() is None}})


async def read_outcome(settings: Settings) -> Outcome:
    """A run's output topics and product-window changelog, read_committed."""
    async def read(topic: str) -> list[tuple[bytes | None, bytes | None]]:
        found = await read_all(settings.kafka_bootstrap, topic, partitions=settings.partitions,
                               timeout_s=120)
        return [(r.key, r.value) for r in found]

    windows = next(n for n in changelog_names(settings) if WINDOWS_TABLE in n)
    batches = await read_all(settings.kafka_bootstrap, settings.topic(
        settings.topic_score_batches), partitions=settings.partitions, timeout_s=120)
    batches.sort(key=lambda r: (r.partition, r.offset))
    return Outcome.read(scores=await read(settings.topic(settings.topic_scores)),
                        dead=await read(settings.topic(settings.topic_dlq)),
                        trends=await read(settings.topic(settings.topic_trends)),
                        alerts=await read(settings.topic(settings.topic_alerts)),
                        changelog=await read(windows),
                        batches=[(r.partition, r.key, r.value) for r in batches])


async def _hostile(base: Settings, broker: Broker,
                   rows: list[dict[str, Any]], log_dir: Path, seed: int,
                   input_ids: set[str]) -> dict[str, Any]:
    """10,000 bad events among the good ones (:mod:`stream.hostile`): each dead-lettered
    with its reason, the good ones ending exactly as in the reference."""
    records, clean, expected = hostile_plan(rows, n_bad=HOSTILE_EVENTS, seed=seed,
                                            max_event_bytes=base.max_event_bytes,
                                            allowed_lateness_s=base.allowed_lateness_s,
                                            now=datetime.now(UTC))
    # its own reference: the at-limit reviews are good input that moves stream time
    reference, _ = await _run_scenario(Scenario("hostile_reference", _reference), base,
                                       broker, clean, log_dir, seed)
    outcome, info = await _run_scenario(Scenario("hostile_input", _reference), base, broker,
                                        records, log_dir, seed)
    verdict = compare(reference, outcome, input_ids=input_ids,
                      expected_dead=expected.dead_keys)
    stats = info.get("final_stats", {})
    checks = {
        "bad_events": sum(expected.reasons.values()),
        "reasons_as_expected": outcome.dead_reasons == expected.reasons,
        "dead_letter_raw_longest": outcome.dead_raw_longest,
        "raw_within_bound": outcome.dead_raw_longest <= base.dlq_max_raw_chars,
        "at_limit_truncated": expected.at_limit_ids <= outcome.truncated_ids,
        "resent_skipped": stats.get("duplicates_skipped") == expected.resent,
        "unknown_fields_counted": stats.get("unknown_fields") == expected.unknown_fields,
        "worker_never_restarted": info["unplanned_restarts"] == 0,
    }
    ok = passed(verdict, exactly_once=False) and all(v for k, v in checks.items()
                                                     if isinstance(v, bool))
    return {**info, **verdict, "hostile": checks,
            "expected_reasons": dict(expected.reasons), "passed": ok}


def ensure_model(out: Path) -> Path:
    """A small fixed model for speed (the issue allows it): built once, reused."""
    model = out / "model"
    if not (model / "manifest.json").exists():
        print(f"building the small chaos model in {model} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "stream", "export", "--tiny", "--out", str(model),
                        "--max-train-examples", "256", "--max-epochs", "1",
                        "--detector", "defaults"], check=True, cwd=REPO_ROOT)
    return model


async def run_chaos(base: Settings, *, out: Path, data: Path, n_reviews: int, seed: int,
                    only: list[str] | None = None, model: Path | None = None) -> dict[str, Any]:
    """Run the reference and every scenario; return the summary (also written as JSON)."""
    started = time.monotonic()
    model_dir = model or ensure_model(out)
    broker = Broker(out / "kafka")
    shutil.rmtree(broker.data_dir, ignore_errors=True)
    rows = chaos_rows(data, n_reviews)
    records = plan(rows, malformed=0, seed=seed)
    input_ids = {str(r["review_id"]) for r in rows}
    base = base.model_copy(update={"model_dir": model_dir, "ort_intra_op_threads": 1,
                                   "broker_session_timeout_s": 10.0, "log_level": "INFO"})
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    broker.up()
    results = []
    try:
        print(f"chaos: {len(records)} reviews, broker {broker.bootstrap}, model {model_dir}",
              flush=True)
        reference, ref_info = await _run_scenario(Scenario("reference", _reference), base,
                                                  broker, records, log_dir, seed)
        ref_verdict = compare(reference, reference, input_ids=input_ids)
        print(f"reference: {ref_verdict['trend_events']} trend events, "
              f"{len(reference.states)} product states, ready after "
              f"{ref_info['ready_after_s']} s", flush=True)
        for i, scenario in enumerate(SCENARIOS):
            if only and scenario.name not in only:
                continue
            print(f"scenario {scenario.name} ...", flush=True)
            try:
                outcome, info = await _run_scenario(scenario, base, broker, records, log_dir,
                                                    seed + i + 1)
            except StreamError as exc:  # stalled or timed out: a failed scenario, go on
                results.append({"name": scenario.name, "guarantee": scenario.guarantee,
                                "error": str(exc), "passed": False,
                                **{c: None for c in COLUMNS[2:-1]}})
                print(f"  {scenario.name} FAILED: {exc}", flush=True)
                continue
            verdict = compare(reference, outcome, input_ids=input_ids)
            ok = passed(verdict, exactly_once=scenario.guarantee == "exactly_once") and \
                info["scenario_check"]
            results.append({**info, **verdict, "passed": ok})
            print("  " + _row(results[-1]), flush=True)
        if not only or "hostile_input" in only:
            print("scenario hostile_input ...", flush=True)
            results.append(await _hostile(base, broker, rows, log_dir, seed, input_ids))
            print("  " + _row(results[-1]), flush=True)
    finally:
        broker.down()
    summary = {"reviews": len(records), "seed": seed, "model_dir": str(model_dir),
               "reference": {**ref_info, "trend_events": ref_verdict["trend_events"],
                             "product_states": len(reference.states),
                             "dead_lettered": sum(reference.dead.values())},
               "scenarios": results, "all_passed": all(r["passed"] for r in results),
               "duration_s": round(time.monotonic() - started, 1)}
    return summary


COLUMNS = ("name", "guarantee", "reviews_lost", "reviews_double_counted",
           "trend_events_missing", "trend_events_duplicated", "trend_events_unexpected",
           "states_differing", "scores_redelivered", "ready_after_s", "passed")


def _row(result: dict[str, Any]) -> str:
    return " | ".join(str(result[c]) for c in COLUMNS)


def table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table."""
    head = ("scenario", "guarantee", "lost", "double", "missing", "dup", "unexpected",
            "states!=", "redelivered", "ready_s", "passed")
    rows = [head] + [tuple(str(r[c]) for c in COLUMNS) for r in summary["scenarios"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ref = summary["reference"]
    lines.append(f"reference: {summary['reviews']} reviews, {ref['trend_events']} trend events, "
                 f"{ref['product_states']} product states; all passed: "
                 f"{summary['all_passed']} ({summary['duration_s']} s)")
    return "\n".join(lines)


def write(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
