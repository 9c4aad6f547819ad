"""Delivering ``trend-alerts`` to the configured webhooks: retries, backoff, dead letters.

:class:`AlertHooks` takes a batch of raw alert records (what the delivery agent read)
and sends each alert to every hook at once, signed (:mod:`stream.webhooks`). Per alert
and hook: 2xx is delivered; 5xx, 429, 408, a timeout or a connection error is retried
with exponential backoff and jitter (a ``Retry-After`` is honoured up to the longest
wait), at most ``webhook_max_attempts`` times and for at most ``webhook_max_delivery_s``
in all; any other answer (4xx, 3xx: redirects are not followed) is final at once. A
hook that did not take the alert is counted (``failed``) and yields a DeadLetter with
stage ``alert`` and reason ``webhook_failed``; its detail names the hook, the attempts
and the last status or error class, never the URL or the secret.

The agent acknowledges a batch only after this returns and the dead letters are
delivered, so an alert whose worker dies mid-delivery is delivered again after the
restart: **at-least-once**, with the same ``webhook-id`` (the alert_id) for receivers
to deduplicate on. Webhooks are outside any Kafka transaction, in both processing
guarantees.

A rebalance or a shutdown must not wait for a slow hook: faust waits for every record
in flight to be acked before it gives partitions up or stops, and all agents wait with
it. So when the app's flow control is suspended (both cases), waits and requests in
flight end, and each unsettled alert is sent back to its own topic and partition before
the batch is acked: the partition's next owner delivers it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from pydantic import ValidationError

from stream.events import DeadLetter, SharpDropAlert, dead_letter
from stream.scoring import RawRecord
from stream.settings import Settings, WebhookConfig
from stream.webhooks import backoff_s, is_retryable, render, retry_after_s, webhook_headers

log = logging.getLogger(__name__)

USER_AGENT = "trendstream-webhooks/1"


@dataclass(frozen=True)
class Response:
    """What the delivery needs of an HTTP answer."""

    status: int
    retry_after_s: float | None = None


# (url, body, headers, timeout_s) -> Response; raises on timeouts and connection errors
Post = Callable[[str, bytes, Mapping[str, str], float], Awaitable[Response]]
Transport = Callable[[], AbstractAsyncContextManager[Post]]


@asynccontextmanager
async def aiohttp_transport() -> AsyncIterator[Post]:
    """POST with one aiohttp session (per delivered batch: alerts are rare)."""
    async with aiohttp.ClientSession(headers={"user-agent": USER_AGENT}) as session:
        async def post(url: str, body: bytes, headers: Mapping[str, str],
                       timeout_s: float) -> Response:
            async with session.post(url, data=body, headers=dict(headers),
                                    allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return Response(resp.status, retry_after_s(resp.headers.get("retry-after")))
        yield post


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float = 15.0
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_delivery_s: float = 120.0

    @classmethod
    def from_settings(cls, s: Settings) -> RetryPolicy:
        return cls(timeout_s=s.webhook_timeout_s, max_attempts=s.webhook_max_attempts,
                   backoff_base_s=s.webhook_backoff_base_s,
                   backoff_max_s=s.webhook_backoff_max_s,
                   max_delivery_s=s.webhook_max_delivery_s)


@dataclass
class DeliveryCounts:
    """Per hook name, since the process started (served at /stats under "webhooks").

    ``sent``: alerts a hook took (2xx); ``failed``: alerts given up on (dead-lettered);
    ``retries``: attempts after the first; ``interrupted``: deliveries cut short by a
    rebalance or a shutdown (the alert is re-queued); ``dead_lettered``: alert-stage
    dead letters by reason (``webhook_failed`` per failed hook, or a record that is no
    alert).
    """

    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    interrupted: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)

    @classmethod
    def for_hooks(cls, names: Sequence[str]) -> DeliveryCounts:
        """Every hook listed with 0, so a hook that never succeeded still shows."""
        def zeros() -> Counter[str]:
            return Counter(dict.fromkeys(names, 0))
        return cls(sent=zeros(), failed=zeros(), retries=zeros(), interrupted=zeros())

    def totals(self) -> dict[str, tuple[int, int]]:
        """Hook name -> (sent, failed): what stream.metrics serves as
        trendstream_alerts_sent_total / trendstream_alerts_failed_total{webhook}."""
        return {name: (self.sent[name], self.failed[name]) for name in self.sent}

    def as_dict(self) -> dict[str, Any]:
        return {"sent": dict(self.sent), "failed": dict(self.failed),
                "retries": dict(self.retries), "interrupted": dict(self.interrupted),
                "dead_lettered": dict(self.dead_lettered)}


@dataclass
class Delivery:
    """What the agent sends after a batch, before it is acked: dead letters, and the
    alerts to put back on their topic (key, value, partition) because a rebalance or a
    shutdown cut their delivery short."""

    dead: list[DeadLetter] = field(default_factory=list)
    requeue: list[tuple[str, bytes, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Outcome:
    hook: WebhookConfig
    status: Literal["delivered", "failed", "interrupted"]
    attempts: int
    last: str  # "HTTP 503", "TimeoutError", ...: never the URL


def _never() -> bool:
    return False


class AlertHooks:
    """Delivers alert records to every configured webhook (see the module docstring)."""

    def __init__(self, hooks: Sequence[WebhookConfig], *, policy: RetryPolicy,
                 external_url: str = "", max_raw_chars: int = 8192,
                 transport: Transport = aiohttp_transport,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, poll_s: float = 0.2) -> None:
        self.hooks = tuple(hooks)
        self.policy = policy
        self.external_url = external_url
        self.max_raw_chars = max_raw_chars
        self.counts = DeliveryCounts.for_hooks([h.name for h in self.hooks])
        self._transport, self._sleep, self._clock = transport, sleep, clock
        self._wall_clock, self._rng = wall_clock, rng or random.Random()
        self._poll_s = poll_s  # how often a wait or a request checks should_stop

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertHooks | None:
        """None when no webhook is configured (then the worker has no delivery agent)."""
        if not settings.webhooks:
            return None
        return cls(settings.webhooks, policy=RetryPolicy.from_settings(settings),
                   external_url=settings.webhook_external_url,
                   max_raw_chars=settings.dlq_max_raw_chars)

    async def deliver(self, records: Sequence[RawRecord], *,
                      should_stop: Callable[[], bool] = _never) -> Delivery:
        """Send every alert to every hook.

        ``should_stop`` turns true when the worker stops or its partitions are revoked:
        faust then waits for this batch to be acked, and everything else waits with it.
        So waits and requests in flight end at once, and each alert not yet settled
        goes back on its topic whole (hooks that took it get it again, same webhook-id).
        """
        delivery = Delivery()
        async with self._transport() as post:
            found = await asyncio.gather(*(self._deliver_record(post, r, should_stop)
                                           for r in records))
        for record, (dead, is_requeued) in zip(records, found, strict=True):
            delivery.dead += dead
            if is_requeued and record.value is not None:
                key = (record.key or b"").decode("utf-8", "replace")
                delivery.requeue.append((key, record.value, record.partition))
        if delivery.requeue:
            log.info("alert delivery interrupted (rebalance or shutdown): %d alert(s) put "
                     "back on their topic", len(delivery.requeue))
        return delivery

    async def _deliver_record(self, post: Post, record: RawRecord,
                              should_stop: Callable[[], bool]
                              ) -> tuple[list[DeadLetter], bool]:
        try:
            alert = SharpDropAlert.model_validate_json(record.value or b"")
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            reason = "invalid_json" if first["type"] == "json_invalid" else "wrong_type"
            return [self._dead(record, reason, f"not a SharpDropAlert: {first['msg']}")], False
        outcomes = await asyncio.gather(*(self._to_hook(post, hook, alert, should_stop)
                                          for hook in self.hooks))
        if any(o.status == "interrupted" for o in outcomes):
            return [], True  # failed hooks get their next chance with the re-queued alert
        failed = [o for o in outcomes if o.status == "failed"]
        for o in failed:
            self.counts.failed[o.hook.name] += 1
            log.warning("alert not delivered webhook=%s alert_id=%s product_id=%s "
                        "attempts=%d last=%s (dead-lettered)", o.hook.name, alert.alert_id,
                        alert.product_id, o.attempts, o.last)
        return [self._dead(record, "webhook_failed", f"webhook={o.hook.name} "
                           f"attempts={o.attempts} last={o.last}") for o in failed], False

    async def _to_hook(self, post: Post, hook: WebhookConfig, alert: SharpDropAlert,
                       should_stop: Callable[[], bool]) -> _Outcome:
        outcome = await self._attempts(post, hook, alert, should_stop)
        if outcome.status == "delivered":  # counted now: other hooks may take longer
            self.counts.sent[hook.name] += 1
        elif outcome.status == "interrupted":
            self.counts.interrupted[hook.name] += 1
        return outcome

    async def _attempts(self, post: Post, hook: WebhookConfig, alert: SharpDropAlert,
                        should_stop: Callable[[], bool]) -> _Outcome:
        p = self.policy
        deadline = self._clock() + p.max_delivery_s
        body = render(hook.format, alert, receiver=hook.name, external_url=self.external_url)
        try:
            secrets = hook.secrets()  # a rotated secret file takes effect here
        except (OSError, ValueError) as exc:
            return _Outcome(hook, "failed", 0, f"secret unusable ({type(exc).__name__})")
        attempt = 0
        while True:
            if should_stop():
                return _Outcome(hook, "interrupted", attempt, "stopping")
            attempt += 1
            headers = webhook_headers(secrets, msg_id=alert.alert_id,
                                      timestamp=int(self._wall_clock()), body=body)
            timeout_s = max(0.001, min(p.timeout_s, deadline - self._clock()))
            try:
                response = await self._until_stop(post(hook.url, body, headers, timeout_s),
                                                  should_stop)
            except _Stopped:
                return _Outcome(hook, "interrupted", attempt, "stopping")
            except Exception as exc:  # timeouts, refused connections, anything: retried
                last, retry, wait_hint = _error_name(exc), True, None
            else:
                if 200 <= response.status < 300:
                    return _Outcome(hook, "delivered", attempt, f"HTTP {response.status}")
                last, retry = f"HTTP {response.status}", is_retryable(response.status)
                wait_hint = response.retry_after_s
            if not retry:
                return _Outcome(hook, "failed", attempt, f"{last} (not retried)")
            if attempt >= p.max_attempts:
                return _Outcome(hook, "failed", attempt, last)
            wait_s = backoff_s(attempt, base_s=p.backoff_base_s, max_s=p.backoff_max_s,
                               rng=self._rng)
            if wait_hint is not None:
                wait_s = max(wait_s, min(wait_hint, p.backoff_max_s))
            if self._clock() + wait_s >= deadline:
                return _Outcome(hook, "failed", attempt,
                                f"{last} (webhook_max_delivery_s spent)")
            log.debug("retrying webhook=%s alert_id=%s attempt=%d last=%s in %.2f s",
                      hook.name, alert.alert_id, attempt, last, wait_s)
            self.counts.retries[hook.name] += 1
            await self._pause(wait_s, should_stop)

    async def _until_stop(self, request: Awaitable[Response],
                          should_stop: Callable[[], bool]) -> Response:
        """Await the request; cancel it and raise _Stopped once should_stop turns true."""
        task = asyncio.ensure_future(request)
        while not task.done():
            await asyncio.wait({task}, timeout=self._poll_s)
            if not task.done() and should_stop():
                task.cancel()
                await asyncio.wait({task})  # let it close its connection; raises nothing
                raise _Stopped
        return task.result()

    async def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep, in slices of poll_s, until the time is up or should_stop turns true."""
        end = self._clock() + seconds
        while (left := end - self._clock()) > 0 and not should_stop():
            await self._sleep(min(left, self._poll_s))

    def _dead(self, record: RawRecord, reason: str, detail: str) -> DeadLetter:
        self.counts.dead_lettered[reason] += 1
        return dead_letter(reason=reason, detail=detail, stage="alert", topic=record.topic,
                           partition=record.partition, offset=record.offset, key=record.key,
                           raw=record.value, max_raw_chars=self.max_raw_chars)


class _Stopped(Exception):
    """should_stop turned true while a request was in flight."""


def _error_name(exc: Exception) -> str:
    """The error class, and for OS errors the errno: exception texts can hold the URL."""
    errno = getattr(exc, "errno", None) or getattr(getattr(exc, "os_error", None), "errno", None)
    return type(exc).__name__ + (f" (errno {errno})" if errno else "")
