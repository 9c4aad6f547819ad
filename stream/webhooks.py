"""Signed alert webhooks: the Standard Webhooks signature, its verifier, the payloads.

Pure: no I/O, and no clock unless one is passed. The delivery (HTTP, retries, dead
letters) is :mod:`stream.alerthooks`; this module is what a consumer needs too::

    from stream.webhooks import WebhookVerificationError, verify

    verify(secret, request.headers, raw_body)   # raises WebhookVerificationError

Signing follows Standard Webhooks 1.0 (symmetric): the headers ``webhook-id`` (the
alert's ``alert_id``: the same on every retry, so receivers deduplicate on it),
``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``:
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the base64-decoded
part of a ``whsec_<base64>`` secret. Several secrets (rotation) give several
signatures, space separated; a receiver accepts the request when one of them matches.

Two bodies: ``trendstream`` (:class:`AlertWebhookPayload`, the SharpDropAlert as it is
on ``trend-alerts``) and ``alertmanager`` (:class:`AlertmanagerPayload`, the shape of
Prometheus Alertmanager's webhook version 4, one firing alert per request). Both are
deterministic functions of the alert: a retry sends the same bytes, only the timestamp
and the signature change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from stream.errors import WebhookVerificationError
from stream.events import SharpDropAlert, UtcDatetime

__all__ = [
    "ALERTNAME",
    "AlertWebhookPayload",
    "AlertmanagerAlert",
    "AlertmanagerPayload",
    "WebhookFormat",
    "WebhookVerificationError",
    "alertmanager_payload",
    "backoff_s",
    "is_retryable",
    "parse_secrets",
    "render",
    "retry_after_s",
    "sign",
    "signature_header",
    "trendstream_payload",
    "verify",
    "webhook_headers",
]

SECRET_PREFIX: Final = "whsec_"
SIGNATURE_VERSION: Final = "v1"
MIN_SECRET_BYTES: Final = 24  # the spec: at least 24 bytes ...
MAX_SECRET_BYTES: Final = 64  # ... at most 512 bits
DEFAULT_TOLERANCE_S: Final = 300
PAYLOAD_TYPE: Final = "trendstream.sharp_drop"
WEBHOOK_PAYLOAD_SCHEMA_VERSION: Final = 1
ALERTNAME: Final = "TrendStreamSharpDrop"
SEVERITY: Final = "warning"
GO_ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert

WebhookFormat = Literal["trendstream", "alertmanager"]


# --- secrets and signatures -------------------------------------------------------------

def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix may be left out)."""
    try:
        return base64.b64decode(secret.strip().removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        msg = "a webhook secret is 'whsec_' followed by base64; this one does not decode"
        raise ValueError(msg) from exc


def parse_secrets(text: str) -> list[str]:
    """The secrets of a setting or secret file: whitespace separated, newest first.

    Each must be ``whsec_<base64>`` of 24 to 64 bytes (Standard Webhooks); the message
    of the ValueError never contains the secret.
    """
    secrets = text.split()
    if not secrets:
        raise ValueError("no webhook secret given (write whsec_<base64>)")
    for i, secret in enumerate(secrets, 1):
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"webhook secret {i} does not start with 'whsec_'")
        size = len(secret_key(secret))
        if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
            msg = (f"webhook secret {i} holds {size} bytes; Standard Webhooks wants "
                   f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (e.g. "
                   "'whsec_' + base64 of 32 random bytes)")
            raise ValueError(msg)
    return secrets


def _to_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """One signature: ``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + _to_bytes(body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_header(secrets: Iterable[str], *, msg_id: str, timestamp: int,
                     body: bytes | str) -> str:
    """The ``webhook-signature`` value: one signature per secret, space separated."""
    return " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets)


def webhook_headers(secrets: Iterable[str], *, msg_id: str, timestamp: int,
                    body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt (a retry gets a new timestamp and signature)."""
    return {"content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, msg_id=msg_id,
                                                  timestamp=timestamp, body=body)}


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> None:
    """Check a received webhook; raise WebhookVerificationError when it must be rejected.

    ``secret``: the ``whsec_...`` secret (several, space separated, while you rotate);
    ``headers``: the request headers, any letter case; ``body``: the raw body, exactly
    as received (parsing and re-serializing JSON changes the bytes). A timestamp more
    than ``tolerance_s`` from ``now`` (default: the clock) is refused either way:
    an old one is a replay. Signatures are compared in constant time. After this,
    deduplicate on the ``webhook-id`` header: a delivery can arrive more than once.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lowered.get(h) for h in (
        "webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        missing = [h for h, v in (("webhook-id", msg_id), ("webhook-timestamp", stamp),
                                  ("webhook-signature", signatures)) if not v]
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:32]!r} is not an "
                                       "integer") from exc
    _check_fresh(timestamp, tolerance_s=tolerance_s,
                 now=datetime.now(UTC).timestamp() if now is None else now)
    expected = [sign(s, msg_id=msg_id, timestamp=timestamp, body=body).encode()
                for s in secret.split()]
    given = [s.encode() for s in signatures.split() if s.startswith(f"{SIGNATURE_VERSION},")]
    # every pair is compared, so the time taken does not tell which one matched
    matches = [hmac.compare_digest(e, g) for e in expected for g in given]
    if not any(matches):
        msg = ("no v1 signature matches: a wrong secret, or the body changed on the way "
               "(verify the raw bytes, not re-serialized JSON)")
        raise WebhookVerificationError(msg)


def _check_fresh(timestamp: int, *, tolerance_s: float, now: float) -> None:
    age_s = now - timestamp
    if age_s > tolerance_s:
        msg = (f"webhook-timestamp is {age_s:.0f} s old (tolerance {tolerance_s:.0f} s): "
               "a replayed request, or a clock that is off")
        raise WebhookVerificationError(msg)
    if -age_s > tolerance_s:
        msg = (f"webhook-timestamp is {-age_s:.0f} s in the future (tolerance "
               f"{tolerance_s:.0f} s): a clock that is off")
        raise WebhookVerificationError(msg)


# --- payloads ---------------------------------------------------------------------------

class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        """The request body: compact JSON, fields in declaration order."""
        return self.model_dump_json().encode()


class AlertWebhookPayload(_Payload):
    """The ``trendstream`` body: the alert as on ``trend-alerts``, typed and versioned."""

    type: Literal["trendstream.sharp_drop"] = PAYLOAD_TYPE
    schema_version: int = WEBHOOK_PAYLOAD_SCHEMA_VERSION
    timestamp: UtcDatetime  # when the call was made: the alert's window_end
    alert: SharpDropAlert


class AlertmanagerAlert(_Payload):
    """One entry of ``alerts[]`` in Alertmanager's webhook (field names are its own)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    startsAt: str
    endsAt: str
    generatorURL: str
    fingerprint: str


class AlertmanagerPayload(_Payload):
    """Alertmanager's webhook body, version 4 (what its ``webhook_config`` receivers read)."""

    version: Literal["4"] = "4"
    groupKey: str
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str]
    commonLabels: dict[str, str]
    commonAnnotations: dict[str, str]
    externalURL: str
    alerts: list[AlertmanagerAlert]


def trendstream_payload(alert: SharpDropAlert) -> AlertWebhookPayload:
    return AlertWebhookPayload(timestamp=alert.window_end, alert=alert)


def alertmanager_payload(alert: SharpDropAlert, *, receiver: str,
                         external_url: str = "") -> AlertmanagerPayload:
    """One firing alert: labels alertname, product_id, severity; fingerprint from alert_id.

    Alertmanager groups by labels; here every request is its own group (one product),
    so the group labels, common labels and common annotations are the alert's.
    """
    labels = {"alertname": ALERTNAME, "product_id": alert.product_id, "severity": SEVERITY}
    window_end = alert.window_end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotations = {
        "summary": (f"Sharp drop predicted for product {alert.product_id}: review volume "
                    f"expected to fall {alert.predicted_fall:.0%} (alert level "
                    f"{alert.threshold:.0%})"),
        "predicted_fall": f"{alert.predicted_fall:.4f}",
        "threshold": f"{alert.threshold:.4f}",
        "window_end": window_end,
        "evidence": ",".join(alert.evidence_review_ids),
        "alert_id": alert.alert_id,
    }
    group = {"alertname": ALERTNAME, "product_id": alert.product_id}
    group_key = "{}:{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in group.items()) + "}"
    entry = AlertmanagerAlert(status="firing", labels=labels, annotations=annotations,
                              startsAt=window_end, endsAt=GO_ZERO_TIME,
                              generatorURL=external_url, fingerprint=alert.alert_id[:16])
    return AlertmanagerPayload(groupKey=group_key, status="firing", receiver=receiver,
                               groupLabels=group, commonLabels=labels,
                               commonAnnotations=annotations, externalURL=external_url,
                               alerts=[entry])


def render(fmt: WebhookFormat, alert: SharpDropAlert, *, receiver: str,
           external_url: str = "") -> bytes:
    """The request body of ``alert`` in a hook's format."""
    if fmt == "alertmanager":
        return alertmanager_payload(alert, receiver=receiver,
                                    external_url=external_url).to_bytes()
    return trendstream_payload(alert).to_bytes()


# --- retry policy -----------------------------------------------------------------------

def is_retryable(status: int) -> bool:
    """5xx, 429 (rate limited) and 408 (timeout) are worth another attempt; other non-2xx
    answers (a wrong URL or secret, 410 Gone, a redirect) are not."""
    return status >= 500 or status in (408, 429)


def backoff_s(retry: int, *, base_s: float, max_s: float,
              rng: random.Random | None = None) -> float:
    """Wait before retry ``retry`` (1 = the second attempt): exponential with jitter.

    The cap doubles per retry from ``base_s`` up to ``max_s``; the wait is drawn
    uniformly from [cap / 2, cap] ("equal jitter": spread out, never near zero).
    """
    cap = min(max_s, base_s * 2.0 ** (retry - 1))
    return cap / 2 + (rng or random).random() * cap / 2


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
