"""Standard Webhooks signing and verification, the two payload shapes, the retry policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime

import pytest

from stream.events import SharpDropAlert, TrendSignals
from stream.webhooks import (
    AlertmanagerPayload,
    AlertWebhookPayload,
    WebhookVerificationError,
    backoff_s,
    is_retryable,
    parse_secrets,
    render,
    retry_after_s,
    sign,
    verify,
    webhook_headers,
)

# The test vector of the Standard Webhooks reference libraries (python/tests/test_webhooks.py)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
NOW = 1_700_000_000


def _by_hand(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's recipe, written out without our helpers."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body,
                   hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def _alert(**changes: object) -> SharpDropAlert:
    signals = TrendSignals(recent_count=3, baseline_count=60, recent_rate_per_day=0.1,
                           baseline_rate_per_day=2.0, volume_ratio=0.05,
                           mean_score_recent=None, mean_score_baseline=0.5,
                           mean_rating_recent=None, mean_rating_baseline=4.0,
                           trend_index=-0.99, days_since_last_review=13)
    fields: dict[str, object] = dict(
        alert_id="0123456789abcdef0123456789abcdef", product_id='p"1',
        window_start=datetime(2017, 4, 21, tzinfo=UTC),
        window_end=datetime(2017, 7, 19, tzinfo=UTC), predicted_fall=0.626374,
        threshold=0.6, signals=signals, evidence_review_ids=["r1", "r2"],
        trend_event_id=None, model_id="m", detector_version="volume-v1")
    return SharpDropAlert(**{**fields, **changes})


def test_sign_matches_the_spec_vector_and_the_recipe_by_hand() -> None:
    """sign() gives the reference libraries' published signature and the hand-made one."""
    assert _by_hand(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY.encode()) == SPEC_SIGNATURE
    assert sign(SPEC_SECRET, msg_id=SPEC_ID, timestamp=SPEC_TS, body=SPEC_BODY) == SPEC_SIGNATURE
    body = b'{"alert": "\xc3\xa9"}'
    assert sign(OTHER_SECRET, msg_id="a1", timestamp=NOW, body=body) == \
        _by_hand(OTHER_SECRET, "a1", NOW, body)


def test_headers_carry_id_timestamp_and_one_signature_per_secret() -> None:
    """Two secrets (rotation) give two space-separated v1 signatures, newest first."""
    body = b"{}"
    headers = webhook_headers([OTHER_SECRET, SPEC_SECRET], msg_id="a1", timestamp=NOW,
                              body=body)
    assert headers == {
        "content-type": "application/json", "webhook-id": "a1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": f"{_by_hand(OTHER_SECRET, 'a1', NOW, body)} "
                             f"{_by_hand(SPEC_SECRET, 'a1', NOW, body)}"}


def test_verify_accepts_the_spec_vector_at_its_time() -> None:
    """The published headers and body verify when the clock reads their timestamp."""
    headers = {"Webhook-Id": SPEC_ID, "Webhook-Timestamp": str(SPEC_TS),
               "Webhook-Signature": SPEC_SIGNATURE}  # header names in any case
    verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TS + 10)
    verify(SPEC_SECRET.removeprefix("whsec_"), headers, SPEC_BODY.encode(), now=SPEC_TS)


def _signed(body: bytes = b'{"x":1}', *, secrets: tuple[str, ...] = (SPEC_SECRET,),
            timestamp: int = NOW) -> dict[str, str]:
    return webhook_headers(list(secrets), msg_id="alert-1", timestamp=timestamp, body=body)


@pytest.mark.parametrize(("headers", "body", "secret", "message"), [
    (_signed(), b'{"x":2}', SPEC_SECRET, "no v1 signature matches"),
    (_signed(), b'{"x": 1}', SPEC_SECRET, "no v1 signature matches"),  # re-serialized
    (_signed(), b'{"x":1}', OTHER_SECRET, "no v1 signature matches"),
    (_signed(timestamp=NOW - 301), b'{"x":1}', SPEC_SECRET, "301 s old"),
    (_signed(timestamp=NOW + 301), b'{"x":1}', SPEC_SECRET, "301 s in the future"),
    ({**_signed(), "webhook-id": "alert-2"}, b'{"x":1}', SPEC_SECRET, "no v1 signature"),
    ({**_signed(), "webhook-timestamp": str(NOW - 1)}, b'{"x":1}', SPEC_SECRET,
     "no v1 signature"),
    ({**_signed(), "webhook-timestamp": "soon"}, b'{"x":1}', SPEC_SECRET, "not an integer"),
    ({k: v for k, v in _signed().items() if k != "webhook-signature"}, b'{"x":1}',
     SPEC_SECRET, "missing header(s): webhook-signature"),
    ({**_signed(), "webhook-signature": "v2," + _signed()["webhook-signature"][3:]},
     b'{"x":1}', SPEC_SECRET, "no v1 signature"),
])
def test_verify_rejects(headers: dict[str, str], body: bytes, secret: str,
                        message: str) -> None:
    """A changed body, id or timestamp, a wrong secret, a stale or future time all fail."""
    with pytest.raises(WebhookVerificationError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        verify(secret, headers, body, now=NOW)


def test_verify_within_tolerance_and_across_rotation() -> None:
    """299 s old passes; during rotation either side may hold the old or the new secret."""
    verify(SPEC_SECRET, _signed(timestamp=NOW - 299), b'{"x":1}', now=NOW)
    rotated = _signed(secrets=(OTHER_SECRET, SPEC_SECRET))
    verify(SPEC_SECRET, rotated, b'{"x":1}', now=NOW)  # receiver still on the old one
    verify(OTHER_SECRET, rotated, b'{"x":1}', now=NOW)  # receiver already on the new one
    verify(f"{OTHER_SECRET} {SPEC_SECRET}", _signed(), b'{"x":1}', now=NOW)  # receiver: both
    verify(SPEC_SECRET, _signed(timestamp=NOW - 3000), b'{"x":1}', now=NOW, tolerance_s=3600)


@pytest.mark.parametrize(("text", "message"), [
    ("", "no webhook secret"),
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
    (f"{OTHER_SECRET} MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret 2 does not start"),
    ("whsec_@@@@", "does not decode"),
    ("whsec_" + base64.b64encode(b"short").decode(), "holds 5 bytes"),
    ("whsec_" + base64.b64encode(bytes(65)).decode(), "holds 65 bytes"),
])
def test_bad_secrets_are_refused_without_showing_them(text: str, message: str) -> None:
    """A malformed or too short secret fails with a message that does not contain it."""
    with pytest.raises(ValueError, match=message) as info:
        parse_secrets(text)
    assert all(secret.removeprefix("whsec_") not in str(info.value) for secret in text.split())


def test_parse_secrets_keeps_the_order() -> None:
    """Whitespace and newlines separate secrets (a secret file may hold two)."""
    assert parse_secrets(f" {OTHER_SECRET}\n{SPEC_SECRET}\n") == [OTHER_SECRET, SPEC_SECRET]


def test_trendstream_payload_wraps_the_alert() -> None:
    """type, schema_version, timestamp (the window end) and the alert, field for field."""
    alert = _alert()
    body = render("trendstream", alert, receiver="ops")
    payload = json.loads(body)
    assert list(payload) == ["type", "schema_version", "timestamp", "alert"]
    assert (payload["type"], payload["schema_version"], payload["timestamp"]) == \
        ("trendstream.sharp_drop", 1, "2017-07-19T00:00:00Z")
    assert payload["alert"] == json.loads(alert.to_bytes())
    assert AlertWebhookPayload.model_validate_json(body).alert == alert
    assert render("trendstream", alert, receiver="other") == body  # same bytes every time


def test_alertmanager_payload_has_the_v4_keys_exactly() -> None:
    """The keys and values of Alertmanager's webhook version 4, for one firing alert."""
    alert = _alert()
    payload = json.loads(render("alertmanager", alert, receiver="ops",
                                external_url="https://dash.example"))
    assert set(payload) == {"version", "groupKey", "truncatedAlerts", "status", "receiver",
                            "groupLabels", "commonLabels", "commonAnnotations",
                            "externalURL", "alerts"}
    labels = {"alertname": "TrendStreamSharpDrop", "product_id": 'p"1', "severity": "warning"}
    annotations = {
        "summary": 'Sharp drop predicted for product p"1: review volume expected to fall '
                   "63% (alert level 60%)",
        "predicted_fall": "0.6264", "threshold": "0.6000", "window_end": "2017-07-19T00:00:00Z",
        "evidence": "r1,r2", "alert_id": alert.alert_id}
    assert payload == {
        "version": "4", "truncatedAlerts": 0, "status": "firing", "receiver": "ops",
        "groupKey": '{}:{alertname="TrendStreamSharpDrop", product_id="p\\"1"}',
        "groupLabels": {"alertname": "TrendStreamSharpDrop", "product_id": 'p"1'},
        "commonLabels": labels, "commonAnnotations": annotations,
        "externalURL": "https://dash.example",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": "2017-07-19T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "https://dash.example",
                    "fingerprint": "0123456789abcdef"}]}
    assert set(payload["alerts"][0]) == {"status", "labels", "annotations", "startsAt",
                                         "endsAt", "generatorURL", "fingerprint"}
    AlertmanagerPayload.model_validate(payload)


def test_alertmanager_fingerprint_follows_the_alert_id() -> None:
    """Same alert_id, same fingerprint; another alert_id, another one."""
    def fingerprint(alert: SharpDropAlert) -> str:
        return json.loads(render("alertmanager", alert, receiver="x"))["alerts"][0][
            "fingerprint"]
    assert fingerprint(_alert()) == fingerprint(_alert(predicted_fall=0.9))
    assert fingerprint(_alert()) != fingerprint(_alert(alert_id="f" * 32))


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    """Base 1 s, cap 8 s: the ceilings 1, 2, 4, 8, 8; each wait in [ceiling / 2, ceiling]."""
    low = [backoff_s(r, base_s=1, max_s=8, rng=_Fixed(0.0)) for r in range(1, 6)]
    high = [backoff_s(r, base_s=1, max_s=8, rng=_Fixed(1.0)) for r in range(1, 6)]
    assert low == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert high == [1.0, 2.0, 4.0, 8.0, 8.0]
    rng = random.Random(7)
    for retry in range(1, 12):
        wait = backoff_s(retry, base_s=0.5, max_s=30, rng=rng)
        ceiling = min(30, 0.5 * 2 ** (retry - 1))
        assert ceiling / 2 <= wait <= ceiling


def test_which_answers_are_retried() -> None:
    """5xx, 429 and 408 are retried; other 4xx and redirects are not."""
    assert [s for s in (301, 400, 401, 403, 404, 408, 410, 422, 429, 500, 502, 503, 504)
            if is_retryable(s)] == [408, 429, 500, 502, 503, 504]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    """Retry-After: 7 is 7 s; an HTTP date is the time until it; junk is ignored."""
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert retry_after_s("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
