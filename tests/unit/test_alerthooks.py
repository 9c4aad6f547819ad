"""Webhook settings and the delivery policy, with a scripted transport and a fake clock."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stream.alerthooks import AlertHooks, Delivery, Post, Response, RetryPolicy
from stream.app import Pipeline, build_app
from stream.errors import SettingsError
from stream.events import DeadLetter, SharpDropAlert, TrendSignals
from stream.scoring import RawRecord
from stream.settings import Settings, WebhookConfig, load_settings
from stream.settingsdoc import describe
from stream.trends import DetectorParams
from stream.webhooks import verify

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()


def _alert(alert_id: str = "a" * 32) -> SharpDropAlert:
    signals = TrendSignals(recent_count=3, baseline_count=60, recent_rate_per_day=0.1,
                           baseline_rate_per_day=2.0, volume_ratio=0.05,
                           mean_score_recent=None, mean_score_baseline=0.5,
                           mean_rating_recent=None, mean_rating_baseline=4.0,
                           trend_index=-0.99, days_since_last_review=13)
    return SharpDropAlert(alert_id=alert_id, product_id="p1",
                          window_start=datetime(2017, 4, 21, tzinfo=UTC),
                          window_end=datetime(2017, 7, 19, tzinfo=UTC), predicted_fall=0.63,
                          threshold=0.6, signals=signals, evidence_review_ids=["r1"],
                          trend_event_id=None, model_id="m", detector_version="volume-v1")


def _record(value: bytes, offset: int = 7) -> RawRecord:
    return RawRecord("trend-alerts", 2, offset, b"p1", value)


def _hook(name: str, fmt: str = "trendstream", secret: str = SECRET) -> WebhookConfig:
    return WebhookConfig(name=name, url=f"https://hooks.example/{name}?token=t0ps3cret",
                         format=fmt, secret=secret)


class Script:
    """A transport that answers from a script per hook URL and records every request."""

    def __init__(self, answers: dict[str, list[int | Exception]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, bytes, dict[str, str], float]] = []

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Post]:
        async def post(url: str, body: bytes, headers: Mapping[str, str],
                       timeout_s: float) -> Response:
            self.requests.append((url, body, dict(headers), timeout_s))
            name = url.split("/")[3].split("?")[0]
            script = self.answers[name]
            answer = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(answer, Exception):
                raise answer
            if answer == 0:  # hang until cancelled
                await asyncio.Event().wait()
            return Response(answer, retry_after_s=30.0 if answer == 503 else None)
        yield post


class Clock:
    """Monotonic and wall time that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


POLICY = RetryPolicy(timeout_s=5.0, max_attempts=4, backoff_base_s=1.0, backoff_max_s=8.0,
                     max_delivery_s=60.0)


def _hooks(hooks: list[WebhookConfig], script: Script, clock: Clock, *, poll_s: float = 1e9,
           **policy: float) -> AlertHooks:
    return AlertHooks(hooks, policy=replace(POLICY, **policy),
                      max_raw_chars=8192, transport=script, sleep=clock.sleep,
                      clock=clock.time, wall_clock=clock.time, poll_s=poll_s)


def _deliver(hooks: AlertHooks, *records: RawRecord) -> list[DeadLetter]:
    delivery = asyncio.run(hooks.deliver(list(records)))
    assert delivery.requeue == []
    return delivery.dead


def test_retried_until_taken_then_counted_once() -> None:
    """500, 500, 200: three signed attempts with the same webhook-id, one sent, two retries."""
    script, clock = Script({"ops": [500, 500, 200]}), Clock()
    hooks = _hooks([_hook("ops")], script, clock)
    alert = _alert()
    assert _deliver(hooks, _record(alert.to_bytes())) == []
    assert len(script.requests) == 3
    for _, body, headers, _ in script.requests:
        assert headers["webhook-id"] == alert.alert_id
        verify(SECRET, headers, body, now=clock.now)
        assert json.loads(body)["alert"]["alert_id"] == alert.alert_id
    assert len({r[1] for r in script.requests}) == 1  # the same bytes each time
    assert hooks.counts.as_dict() == {"sent": {"ops": 1}, "failed": {"ops": 0},
                                      "retries": {"ops": 2}, "interrupted": {"ops": 0},
                                      "dead_lettered": {}}
    assert 0.5 <= clock.slept[0] <= 1.0 and 1.0 <= clock.slept[1] <= 2.0


def test_a_hook_that_always_fails_is_dead_lettered_after_the_last_attempt() -> None:
    """Four 500s: failed once, a DeadLetter (stage alert) with the alert JSON, no secret."""
    script, clock = Script({"ops": [200], "down": [500]}), Clock()
    hooks = _hooks([_hook("ops"), _hook("down", "alertmanager")], script, clock)
    raw = _alert().to_bytes()
    (letter,) = _deliver(hooks, _record(raw))
    assert (letter.stage, letter.reason, letter.topic, letter.partition, letter.offset,
            letter.key) == ("alert", "webhook_failed", "trend-alerts", 2, 7, "p1")
    assert letter.detail == "webhook=down attempts=4 last=HTTP 500"
    assert letter.raw_value == raw.decode()
    text = letter.model_dump_json()
    assert SECRET.removeprefix("whsec_") not in text and "t0ps3cret" not in text
    assert hooks.counts.sent == {"ops": 1, "down": 0}
    assert hooks.counts.failed == {"ops": 0, "down": 1}
    assert hooks.counts.dead_lettered == {"webhook_failed": 1}
    assert sum(1 for url, *_ in script.requests if "/down" in url) == 4


def test_other_4xx_answers_are_final_at_once() -> None:
    """404 and 410 are not retried: one attempt, then the dead letter says so."""
    for status in (404, 410, 301):
        script, clock = Script({"ops": [status]}), Clock()
        hooks = _hooks([_hook("ops")], script, clock)
        (letter,) = _deliver(hooks, _record(_alert().to_bytes()))
        assert letter.detail == f"webhook=ops attempts=1 last=HTTP {status} (not retried)"
        assert (len(script.requests), clock.slept) == (1, [])


def test_timeouts_and_connection_errors_are_retried() -> None:
    """A timeout, then a refused connection, then 204: delivered on the third attempt."""
    script = Script({"ops": [TimeoutError(), ConnectionRefusedError(111, "refused"), 204]})
    clock = Clock()
    hooks = _hooks([_hook("ops")], script, clock)
    assert _deliver(hooks, _record(_alert().to_bytes())) == []
    assert hooks.counts.retries == {"ops": 2}


def test_the_error_text_never_reaches_the_dead_letter() -> None:
    """An exception whose message holds the URL is named by its class and errno only."""
    script = Script({"ops": [OSError(113, "no route to https://hooks.example/ops?token=x")]})
    hooks = _hooks([_hook("ops")], script, Clock(), max_attempts=2)
    (letter,) = _deliver(hooks, _record(_alert().to_bytes()))
    assert letter.detail == "webhook=ops attempts=2 last=OSError (errno 113)"


def test_the_delivery_time_limit_ends_retries_early() -> None:
    """Retry-After 30 s (503), 20 s allowed: waits of 8 s (the cap) while time is left."""
    script, clock = Script({"ops": [503]}), Clock()
    hooks = _hooks([_hook("ops")], script, clock, max_attempts=50, max_delivery_s=20.0)
    (letter,) = _deliver(hooks, _record(_alert().to_bytes()))
    assert clock.slept == [8.0, 8.0]  # Retry-After 30 s, cut to backoff_max_s
    assert letter.detail == "webhook=ops attempts=3 last=HTTP 503 (webhook_max_delivery_s spent)"
    assert [r[3] for r in script.requests] == [5.0, 5.0, 4.0]  # the last timeout: time left


def test_a_record_that_is_no_alert_is_dead_lettered_without_a_request() -> None:
    """Junk and a wrong shape on trend-alerts: invalid_json / wrong_type, nothing sent."""
    script = Script({"ops": [200]})
    hooks = _hooks([_hook("ops")], script, Clock())
    letters = _deliver(hooks, _record(b"{not json", 1), _record(b'{"alert_id": 1}', 2))
    assert [(d.reason, d.offset, d.stage) for d in letters] == \
        [("invalid_json", 1, "alert"), ("wrong_type", 2, "alert")]
    assert script.requests == []


def test_a_batch_goes_out_concurrently_and_each_alert_keeps_its_id() -> None:
    """Two alerts to two hooks: four requests, each webhook-id its alert's id."""
    script = Script({"a": [200], "b": [200]})
    hooks = _hooks([_hook("a"), _hook("b", "alertmanager")], script, Clock())
    first, second = _alert("1" * 32), _alert("2" * 32)
    assert _deliver(hooks, _record(first.to_bytes(), 1), _record(second.to_bytes(), 2)) == []
    assert sorted((url.split("?")[0][-1], h["webhook-id"][0]) for url, _, h, _ in
                  script.requests) == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    assert hooks.counts.sent == {"a": 2, "b": 2}


def test_a_rotated_secret_file_takes_effect_on_the_next_alert(tmp_path: Path) -> None:
    """The file is read per alert: after adding a secret, requests carry both signatures."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(OLD_SECRET + "\n")
    hook = WebhookConfig(name="ops", url="https://hooks.example/ops", secret_file=secret_file)
    script, clock = Script({"ops": [200]}), Clock()
    hooks = _hooks([hook], script, clock)
    _deliver(hooks, _record(_alert().to_bytes()))
    secret_file.write_text(f"{SECRET} {OLD_SECRET}\n")
    _deliver(hooks, _record(_alert().to_bytes()))
    first, second = (r[2]["webhook-signature"].split() for r in script.requests)
    assert (len(first), len(second)) == (1, 2)
    _, body, headers, _ = script.requests[1]
    verify(SECRET, headers, body, now=clock.now)
    verify(OLD_SECRET, headers, body, now=clock.now)


def test_webhooks_come_from_one_json_variable(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """TRENDSTREAM_WEBHOOKS: a JSON list; secret or secret_file; the dump hides URL paths."""
    (tmp_path / "s").write_text(SECRET)
    monkeypatch.setenv("TRENDSTREAM_WEBHOOKS", json.dumps([
        {"name": "ops", "url": "https://user:pw@hooks.example/T0/B1?token=x",
         "format": "alertmanager", "secret_file": str(tmp_path / "s")},
        {"name": "audit", "url": "http://10.0.0.5:8080/in", "secret": SECRET}]))
    settings = load_settings()
    assert [(h.name, h.format) for h in settings.webhooks] == \
        [("ops", "alertmanager"), ("audit", "trendstream")]
    dump = describe(settings, markdown=False)
    assert "TRENDSTREAM_WEBHOOKS=[ops (alertmanager) https://hooks.example, " \
           "audit (trendstream) http://10.0.0.5:8080]" in dump
    for hidden in ("token=x", "T0/B1", "pw", SECRET.removeprefix("whsec_")):
        assert hidden not in dump


@pytest.mark.parametrize(("hooks", "message"), [
    ('[{"name": "a", "url": "https://x/y"}]', "exactly one of secret, secret_file"),
    (f'[{{"name": "a", "url": "ftp://x/y", "secret": "{SECRET}"}}]', "http(s)"),
    (f'[{{"name": "a b", "url": "https://x/y", "secret": "{SECRET}"}}]', "pattern"),
    (f'[{{"name": "a", "url": "https://x", "secret": "{SECRET}"}}, '
     f'{{"name": "a", "url": "https://y", "secret": "{SECRET}"}}]', "its own name"),
    ('[{"name": "a", "url": "https://x/y", "secret": "whsec_c2hvcnQ="}]', "holds 5 bytes"),
    ('[{"name": "a", "url": "https://x/y", "secret_file": "/nonexistent/s"}]', "no secret file"),
    ('[{"name": "a", "url": "https://x/y", "secret": "whsec_', "not valid JSON|Unterminated"),
])
def test_bad_webhook_settings_stop_the_start(monkeypatch: pytest.MonkeyPatch, hooks: str,
                                             message: str) -> None:
    """Each mistake is one SettingsError line naming the variable or the hook."""
    monkeypatch.setenv("TRENDSTREAM_WEBHOOKS", hooks)
    with pytest.raises(SettingsError, match=message.replace("(s)", r"\(s\)")) as info:
        load_settings()
    assert "TRENDSTREAM_WEBHOOKS" in str(info.value) or "webhooks" in str(info.value)


def test_no_webhooks_no_delivery_agent() -> None:
    """Without TRENDSTREAM_WEBHOOKS the app has no deliver_alerts agent; with one it has."""
    for webhooks, expected in (([], False), ([_hook("ops")], True)):
        settings = Settings(webhooks=webhooks, app_id="unit-hooks")
        scorer: Any = SimpleNamespace(model_id="m", provider="cpu",  # what build_app reads
                                      variant=SimpleNamespace(precision="fp32"))
        pipeline = Pipeline(settings=settings, scorer=scorer, params=DetectorParams(),
                            hooks=AlertHooks.from_settings(settings))
        names = [agent.name for agent in build_app(pipeline).agents.values()]
        assert ("stream.app.deliver_alerts" in names) is expected


def test_a_stop_during_a_backoff_wait_puts_the_alert_back_unsettled() -> None:
    """Stopping while waiting to retry: no more attempts, no dead letter, re-queued whole."""
    script, clock = Script({"ok": [200], "down": [500]}), Clock()
    hooks = _hooks([_hook("ok"), _hook("down")], script, clock, poll_s=0.25,
                   backoff_base_s=4.0)
    raw = _alert().to_bytes()
    delivery = asyncio.run(hooks.deliver([_record(raw)],
                                         should_stop=lambda: clock.now >= 1_001.0))
    assert (delivery.dead, delivery.requeue) == ([], [("p1", raw, 2)])
    assert sum(1 for url, *_ in script.requests if "/down" in url) == 1
    assert clock.now < 1_002.0  # the 2-4 s wait was cut at the first poll past 1 s
    assert hooks.counts.as_dict() == {"sent": {"ok": 1, "down": 0},
                                      "failed": {"ok": 0, "down": 0},
                                      "retries": {"ok": 0, "down": 1},
                                      "interrupted": {"ok": 0, "down": 1},
                                      "dead_lettered": {}}


def test_a_stop_cancels_a_request_in_flight() -> None:
    """A hook that never answers: once the worker stops, the request is cancelled at once."""
    script, clock = Script({"hang": [0]}), Clock()
    hooks = _hooks([_hook("hang")], script, clock, poll_s=0.01)
    stopping = {"now": False}

    async def run() -> Delivery:
        task = asyncio.ensure_future(hooks.deliver([_record(_alert().to_bytes())],
                                                   should_stop=lambda: stopping["now"]))
        while not script.requests:
            await asyncio.sleep(0.01)
        stopping["now"] = True
        return await asyncio.wait_for(task, timeout=5)

    delivery = asyncio.run(run())
    assert len(delivery.requeue) == 1 and delivery.dead == []
    assert hooks.counts.interrupted == {"hang": 1}


def test_hook_counts_reach_prometheus() -> None:
    """Each hook's sent and failed counts are served at /metrics, labelled by hook name."""
    settings = Settings(webhooks=[_hook("ops")], app_id="unit-hooks")
    scorer: Any = SimpleNamespace(model_id="m", provider="cpu",
                                  variant=SimpleNamespace(precision="fp32"))
    pipeline = Pipeline(settings=settings, scorer=scorer, params=DetectorParams(),
                        hooks=AlertHooks.from_settings(settings))
    assert pipeline.hooks is not None
    pipeline.hooks.counts.sent["ops"] += 2
    pipeline.hooks.counts.failed["ops"] += 1
    text = pipeline.metrics.render().decode()
    assert 'trendstream_alerts_sent_total{webhook="ops"} 2.0' in text
    assert 'trendstream_alerts_failed_total{webhook="ops"} 1.0' in text
