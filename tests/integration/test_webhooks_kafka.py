"""Alert webhooks against the real broker, a real worker and a local HTTP receiver.

One worker, three hooks on one receiver (127.0.0.1): ``flaky`` answers 500, 500, then 200
to each alert; ``am`` takes the Alertmanager format (its secret being rotated); ``down``
holds its first request until the test lets go, then answers 500 for good. Two alerts:
one produced straight onto trend-alerts, one raised by the aggregation of real reviews,
which the worker scores while the first alert's delivery is stuck.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from stream import dlq
from stream.artifact import read_manifest
from stream.events import DeadLetter, SharpDropAlert, TrendSignals, alert_id
from stream.replay import plan, produce
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.webhooks import AlertmanagerPayload, AlertWebhookPayload, verify
from stream.webhooks import WebhookVerificationError as VerificationError
from stream.workerproc import free_port

from .helpers import read_topic, start_worker, unique_env, wait_for

pytestmark = pytest.mark.integration
START = datetime(2017, 1, 1, tzinfo=UTC)


def _secret(seed: int) -> str:
    return "whsec_" + base64.b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


FLAKY, AM_NEW, AM_OLD, DOWN = _secret(1), _secret(50), _secret(100), _secret(150)


@dataclass(frozen=True)
class Seen:
    hook: str
    msg_id: str
    body: bytes
    error: str | None  # what verify() said; None = authentic
    status: int


class Receiver:
    """An aiohttp server in a thread: verifies each request, answers by a per-hook script."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.seen: list[Seen] = []
        self.release = threading.Event()  # lets the held ``down`` request answer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/{hook}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def requests(self, hook: str, msg_id: str | None = None) -> list[Seen]:
        return [s for s in list(self.seen) if s.hook == hook and msg_id in (None, s.msg_id)]

    async def _handle(self, request: web.Request) -> web.Response:
        hook, body = request.match_info["hook"], await request.read()
        try:
            verify(self.secrets[hook], request.headers, body)
            error = None
        except VerificationError as exc:
            error = str(exc)
        msg_id = request.headers.get("webhook-id", "")
        before = len(self.requests(hook, msg_id))
        status = {"flaky": 500 if before < 2 else 200, "am": 200, "down": 500,
                  "slow": 200}[hook]
        self.seen.append(Seen(hook, msg_id, body, error, status))
        while hook in ("down", "slow") and not self.release.is_set():
            await asyncio.sleep(0.05)
        return web.Response(status=status)


def _one_partition_ids(n: int, partitions: int = 6) -> list[str]:
    """Product ids that Kafka's default partitioner puts on one partition."""
    part, all_p = DefaultPartitioner(), list(range(partitions))
    ids = [f"prod-{i}" for i in range(200)]
    target = part(ids[0].encode(), all_p, all_p)
    return [i for i in ids if part(i.encode(), all_p, all_p) == target][:n]


def _reviews(a: str, b: str) -> list[dict[str, object]]:
    """A: 2 reviews/day for days 0-179, then silence (falling, a sharp drop at the close of
    day 198, as in test_worker_kafka); B: days 178-201 only, to move stream time on."""
    def review(pid: str, day: int, i: int) -> dict[str, object]:
        ts = (START + timedelta(days=day, hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"review_id": f"{pid}-{day:03d}-{i}", "product_id": pid, "ts": ts,
                "text": f"Review {i} of day {day}: works fine.", "rating": 4}
    rows = [review(a, d, i) for d in range(180) for i in range(2)]
    rows += [review(b, d, 0) for d in range(178, 202)]
    return sorted(rows, key=lambda r: (str(r["ts"]), str(r["review_id"])))


def _direct_alert() -> SharpDropAlert:
    signals = TrendSignals(recent_count=2, baseline_count=90, recent_rate_per_day=0.1,
                           baseline_rate_per_day=1.5, volume_ratio=0.07,
                           mean_score_recent=None, mean_score_baseline=0.5,
                           mean_rating_recent=None, mean_rating_baseline=4.0,
                           trend_index=-1.2, days_since_last_review=12)
    end = datetime(2018, 3, 1, tzinfo=UTC)
    return SharpDropAlert(alert_id=alert_id(product_id="direct-1", window_end=end,
                                            model_id="hand", detector_version="volume-v1"),
                          product_id="direct-1", window_start=end - timedelta(days=90),
                          window_end=end, predicted_fall=0.7, threshold=0.6, signals=signals,
                          evidence_review_ids=["d-1", "d-2"], trend_event_id=None,
                          model_id="hand", detector_version="volume-v1")


def _hooks_env(url: str, down_secret_file: Path) -> dict[str, str]:
    hooks = [{"name": "flaky", "url": f"{url}/flaky", "secret": FLAKY},
             {"name": "am", "url": f"{url}/am", "format": "alertmanager",
              "secret": f"{AM_NEW} {AM_OLD}"},
             {"name": "down", "url": f"{url}/down", "secret_file": str(down_secret_file)}]
    return {"TRENDSTREAM_WEBHOOKS": json.dumps(hooks), "TRENDSTREAM_WEBHOOK_MAX_ATTEMPTS": "3",
            "TRENDSTREAM_WEBHOOK_BACKOFF_BASE_S": "0.05",
            "TRENDSTREAM_WEBHOOK_BACKOFF_MAX_S": "0.2",
            "TRENDSTREAM_WEBHOOK_TIMEOUT_S": "120", "TRENDSTREAM_WEBHOOK_MAX_DELIVERY_S": "300",
            "TRENDSTREAM_WEBHOOK_EXTERNAL_URL": "https://dash.example/trendstream",
            "TRENDSTREAM_ALLOWED_LATENESS_S": "0"}


def _stats(worker: Any) -> dict[str, Any]:
    return worker.get("/stats") or {}


def test_alerts_reach_every_webhook_signed_retried_or_dead_lettered(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Retried to success, Alertmanager-shaped, or dead-lettered; scoring goes on meanwhile."""
    receiver = Receiver({"flaky": FLAKY, "am": AM_OLD, "down": DOWN})  # am: not yet rotated
    url = receiver.start()
    (tmp_path / "down.secret").write_text(DOWN + "\n")
    env = unique_env(kafka_bootstrap, tiny_model_dir, **_hooks_env(url, tmp_path / "down.secret"))
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()
                           if k != "TRENDSTREAM_WEBHOOKS"})  # the worker's: JSON in the env
    a, b = _one_partition_ids(2)
    rows = _reviews(a, b)
    direct = _direct_alert()
    model_id = read_manifest(tiny_model_dir).model_id
    raised_id = alert_id(product_id=a, window_end=START + timedelta(days=199),
                         model_id=model_id, detector_version="volume-v1")
    asyncio.run(ensure_topics(settings))
    worker = start_worker(env, tmp_path / "worker.log")
    started = time.monotonic()
    try:
        worker.wait_ready()
        asyncio.run(produce(settings, [(b"direct-1", direct.to_bytes())],
                            topic=settings.topic("trend-alerts")))
        wait_for(lambda: receiver.requests("down") and
                 _stats(worker).get("webhooks", {}).get("sent") == {"flaky": 1, "am": 1,
                                                                    "down": 0},
                 timeout_s=60, what="the direct alert sent to flaky and am, held by down")
        stuck_at = time.monotonic()
        # the delivery agent is stuck on `down`: the other agents must not be
        asyncio.run(produce(settings, plan(rows, malformed=0, seed=0),
                            topic=settings.topic("reviews")))
        scored = wait_for(lambda: (s := _stats(worker)).get("accepted") == len(rows)
                          and s.get("alerts") == 1 and s, timeout_s=120,
                          what="every review scored and aggregated, the sharp drop raised")
        scoring_s = time.monotonic() - stuck_at
        assert scored["webhooks"]["failed"] == {"flaky": 0, "am": 0, "down": 0}
        assert len(receiver.requests("down")) == 1  # still the held first attempt
        assert not read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))
        receiver.release.set()
        final = wait_for(lambda: (w := _stats(worker).get("webhooks", {})).get("failed", {})
                         .get("down") == 2 and w.get("sent", {}).get("am") == 2
                         and w.get("sent", {}).get("flaky") == 2 and w, timeout_s=60,
                         what="both alerts delivered or dead-lettered")
        assert (worker.get("/readyz") or {}).get("ready")
    finally:
        code = worker.stop()
        receiver.stop()
    assert code == 0, worker.log_tail()
    total_s = time.monotonic() - started

    assert final == {"sent": {"flaky": 2, "am": 2, "down": 0},
                     "failed": {"flaky": 0, "am": 0, "down": 2},
                     "retries": {"flaky": 4, "am": 0, "down": 4},
                     "interrupted": {"flaky": 0, "am": 0, "down": 0},
                     "dead_lettered": {"webhook_failed": 2}}
    alerts = {SharpDropAlert.model_validate_json(v).alert_id: v for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("trend-alerts"))}
    assert set(alerts) == {direct.alert_id, raised_id}
    for msg_id, raw in alerts.items():
        flaky = receiver.requests("flaky", msg_id)
        assert [s.status for s in flaky] == [500, 500, 200]
        assert [s.status for s in receiver.requests("down", msg_id)] == [500] * 3
        (am,) = receiver.requests("am", msg_id)
        assert AlertWebhookPayload.model_validate_json(flaky[-1].body).alert == \
            SharpDropAlert.model_validate_json(raw)
        payload = AlertmanagerPayload.model_validate_json(am.body)
        assert (payload.version, payload.status, payload.receiver) == ("4", "firing", "am")
        assert payload.alerts[0].labels["alertname"] == "TrendStreamSharpDrop"
        assert payload.alerts[0].fingerprint == msg_id[:16]
        assert payload.externalURL == "https://dash.example/trendstream"
    assert payload.alerts[0].labels["product_id"] in {a, "direct-1"}
    assert all(s.error is None for s in receiver.seen), [s.error for s in receiver.seen]

    dead = [DeadLetter.model_validate_json(v) for _, _, v in
            read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert sorted((d.stage, d.reason, d.detail, d.raw_value) for d in dead) == sorted(
        ("alert", "webhook_failed", "webhook=down attempts=3 last=HTTP 500", raw.decode())
        for raw in alerts.values())
    text = worker.log_path.read_text() + "".join(d.model_dump_json() for d in dead)
    for secret in (FLAKY, AM_NEW, AM_OLD, DOWN):
        assert secret.removeprefix("whsec_") not in text
    assert f"{url}/" not in text
    print(f"\nreviews scored while delivery was stuck: {scoring_s:.1f} s; "
          f"test from worker start: {total_s:.1f} s")


def _hanging_hook(name: str, secret: str, bootstrap: str, model: Path
                  ) -> tuple[Receiver, dict[str, str], Settings]:
    """A started receiver with one hook that holds requests, a worker env that delivers to
    it (120 s timeout) and the topics."""
    receiver = Receiver({name: secret})
    url = receiver.start()
    hooks = [{"name": name, "url": f"{url}/{name}", "secret": secret}]
    env = unique_env(bootstrap, model, TRENDSTREAM_WEBHOOKS=json.dumps(hooks),
                     TRENDSTREAM_WEBHOOK_TIMEOUT_S="120")
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()
                           if k != "TRENDSTREAM_WEBHOOKS"})
    asyncio.run(ensure_topics(settings))
    return receiver, env, settings


def test_sigterm_mid_delivery_exits_promptly_and_the_restart_delivers_again(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A hook that never answers does not hold up SIGTERM: the alert goes back on its topic,
    and the next worker delivers it again with the same webhook-id (at-least-once)."""
    # `down` holds every request until released
    receiver, env, settings = _hanging_hook("down", DOWN, kafka_bootstrap, tiny_model_dir)
    direct = _direct_alert()
    first = start_worker(env, tmp_path / "worker1.log")
    try:
        first.wait_ready()
        asyncio.run(produce(settings, [(b"direct-1", direct.to_bytes())],
                            topic=settings.topic("trend-alerts")))
        wait_for(lambda: receiver.requests("down"), timeout_s=60, what="the first attempt")
        stopping = time.monotonic()
    finally:
        code = first.stop()
    stop_s = time.monotonic() - stopping
    assert code == 0, first.log_tail()
    assert stop_s < 15, f"SIGTERM took {stop_s:.1f} s with a delivery in flight"
    receiver.release.set()  # from now on `down` answers at once (500 by its script)
    second = start_worker({**env, "TRENDSTREAM_WEBHOOK_MAX_ATTEMPTS": "1"},
                          tmp_path / "worker2.log")
    try:
        second.wait_ready()
        wait_for(lambda: (_stats(second).get("webhooks") or {}).get("failed") == {"down": 1},
                 timeout_s=60, what="the alert delivered again by the restarted worker")
    finally:
        assert second.stop() == 0, second.log_tail()
        receiver.stop()
    # the first attempt (cut by SIGTERM), then the re-queued copy; the original was acked
    assert [s.msg_id for s in receiver.requests("down")] == [direct.alert_id] * 2
    assert [v for _, _, v in read_topic(kafka_bootstrap, settings.topic("trend-alerts"))] \
        == [direct.to_bytes()] * 2
    assert all(s.error is None for s in receiver.seen)
    (letter,) = [DeadLetter.model_validate_json(v) for _, _, v in
                 read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert (letter.stage, letter.detail) == ("alert", "webhook=down attempts=1 last=HTTP 500")
    # after the receiver is fixed: `trendstream dlq redrive --reason webhook_failed`
    report = asyncio.run(dlq.redrive(settings, dlq.Selection(
        reasons=frozenset({"webhook_failed"}))))
    assert (report.selected, report.redriven) == (1, 1)
    assert [v for _, _, v in read_topic(kafka_bootstrap, settings.topic("trend-alerts"))] \
        == [direct.to_bytes()] * 3
    print(f"\nSIGTERM to exit with a delivery in flight: {stop_s:.1f} s")


def test_a_rebalance_does_not_wait_for_a_hanging_hook(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A second worker joins while a hook holds a delivery: the first gives the partitions
    up at once (the alert re-queued), and the alert is then delivered exactly once."""
    # `slow` holds every request until released
    receiver, env, settings = _hanging_hook("slow", FLAKY, kafka_bootstrap, tiny_model_dir)
    direct = _direct_alert()
    workers = [start_worker(env, tmp_path / "worker1.log")]
    try:
        workers[0].wait_ready()
        asyncio.run(produce(settings, [(b"direct-1", direct.to_bytes())],
                            topic=settings.topic("trend-alerts")))
        wait_for(lambda: receiver.requests("slow"), timeout_s=60, what="the first attempt")
        workers.append(start_worker({**env, "TRENDSTREAM_WEB_PORT": str(free_port())},
                                    tmp_path / "worker2.log"))
        join_s = workers[1].wait_ready(timeout_s=100)
        wait_for(lambda: len(receiver.requests("slow")) == 2, timeout_s=60,
                 what="the re-queued alert tried by the partition's new owner")
        receiver.release.set()
        wait_for(lambda: sum((_stats(w).get("webhooks") or {}).get("sent", {}).get("slow", 0)
                             for w in workers) == 1, timeout_s=60, what="one delivery")
        interrupted = sum(_stats(w)["webhooks"]["interrupted"]["slow"] for w in workers)
    finally:
        codes = [w.stop() for w in workers]
        receiver.stop()
    assert codes == [0, 0], [w.log_tail() for w in workers]
    assert join_s < 30, f"the second worker waited {join_s:.0f} s for the rebalance"
    assert interrupted == 1
    assert [s.msg_id for s in receiver.requests("slow")] == [direct.alert_id] * 2
    assert not read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))
    print(f"\nsecond worker ready (rebalance with a delivery in flight): {join_s:.1f} s")
