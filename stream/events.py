"""The records that cross Kafka topics, and the one parser for untrusted input.

Every topic is keyed by ``product_id``. Every record carries ``schema_version``;
adding an optional field keeps the version, anything else bumps it (README, "Event
contracts"). Times are timezone-aware and serialized as ISO-8601 UTC (``...Z``).

Input is parsed from raw bytes by :func:`parse_review`, never by a codec, so that any
bad record becomes an :class:`~stream.errors.EventError` with a stable reason code and
then a :class:`DeadLetter`, instead of an exception inside the consumer.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from stream.errors import EventError

REVIEW_SCHEMA_VERSION: Final = 1
SCORE_SCHEMA_VERSION: Final = 1
TREND_SCHEMA_VERSION: Final = 1
TREND_STATE_SCHEMA_VERSION: Final = 1
ALERT_SCHEMA_VERSION: Final = 1
DEAD_LETTER_SCHEMA_VERSION: Final = 1

# Where a dead letter comes from: the scoring agent (an input review), the aggregation
# agent (a scored review) or the alert delivery agent (a SharpDropAlert no webhook took).
DeadLetterStage = Literal["score", "aggregate", "alert"]

MIN_EVENT_TIME: Final = datetime(1990, 1, 1, tzinfo=UTC)
MS_PER_DAY: Final = 86_400_000

Trend = Literal["rising", "stable", "falling"]

# Reason codes on the dead-letter topic. Stable strings: consumers filter on them.
REASONS: Final = (
    "empty_value",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "unsupported_schema_version",
    "missing_field",
    "wrong_type",
    "empty_text",
    "bad_timestamp",
    "ts_out_of_range",
    "key_mismatch",
    "control_characters",
    "late",
    "duplicate_conflict",
    "unscorable",
    "unprocessable",
    "webhook_failed",
)


def _utc_iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_iso(value: datetime) -> str:
    """A time as every event writes it: ISO-8601 UTC with a ``Z`` (orders as text)."""
    return _utc_iso(value)


_HEX32: Final = "^[0-9a-f]{32}$"  # the pattern of event_id and alert_id (JSON Schema only)
UtcDatetime = Annotated[AwareDatetime, PlainSerializer(_utc_iso, return_type=str)]


def to_ms(value: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return int(value.timestamp() * 1000)


def from_ms(timestamp_ms: int) -> datetime:
    """Aware UTC datetime from milliseconds since the epoch."""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def day_of(timestamp_ms: int) -> int:
    """UTC day index (days since 1970-01-01) of a timestamp."""
    return timestamp_ms // MS_PER_DAY


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    def to_bytes(self) -> bytes:
        """Compact JSON encoding used on the wire."""
        return self.model_dump_json(exclude_none=False).encode()


class ReviewEvent(_Event):
    """A review as producers write it to the ``reviews`` topic (schema_version 1)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")

    schema_version: int = Field(REVIEW_SCHEMA_VERSION, description="1; a missing "
                                "schema_version means 1")
    review_id: str = Field(min_length=1, max_length=256, description="unique id of the "
                           "review; a re-send with the same content is skipped, with other "
                           "content dead-lettered (duplicate_conflict)")
    product_id: str = Field(min_length=1, max_length=256, description="the product; also "
                            "the record key (or no key)")
    ts: UtcDatetime = Field(description="event time: when the review was written")
    text: str = Field(description="the review text (not blank)")
    rating: float | None = Field(default=None, ge=0, le=5, description="stars, 0 to 5")
    title: str | None = Field(None, description="the review title; the model reads "
                              "'title. text'")
    source: str | None = Field(None, description="where the review comes from, e.g. "
                               "'datafiniti:bestbuy.com'")
    category: str | None = Field(default=None, max_length=256, description="product "
                                 "category: picks the detector's seasonal profile")

    @property
    def ts_ms(self) -> int:
        return to_ms(self.ts)

    @property
    def unknown_fields(self) -> int:
        """How many fields this version does not know (ignored, counted)."""
        return len(self.model_extra or {})

    def content_sha256(self) -> str:
        """Hash of what the review says; a re-sent review_id with other content conflicts."""
        parts = [self.product_id, _utc_iso(self.ts), self.title or "", self.text,
                 "" if self.rating is None else repr(float(self.rating))]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class ReviewScore(_Event):
    """One scored review on ``review-scores``: what the aggregator counts."""

    schema_version: int = SCORE_SCHEMA_VERSION
    review_id: str = Field(description="the ReviewEvent's review_id")
    product_id: str = Field(description="the ReviewEvent's product_id (the record key)")
    ts: UtcDatetime = Field(description="the review's event time")
    score: float = Field(ge=0, le=1, description="P(trend up) from the text model")
    is_text_used: bool = Field(description="False when the model cannot read the text")
    unk_ratio: float = Field(ge=0, le=1, description="share of [UNK] tokens")
    n_tokens: int = Field(ge=0, description="tokens of the text before truncation")
    is_truncated: bool = Field(description="the text was cut to the model's max_length")
    rating: float | None = Field(None, description="the ReviewEvent's rating")
    category: str | None = Field(default=None, max_length=256,
                                 description="the ReviewEvent's category")
    content_sha256: str = Field(description="first 16 hex digits of the sha256 of what the "
                                "review says (product_id, ts, title, text, rating)",
                                json_schema_extra={"pattern": "^[0-9a-f]{16}$"})
    model_id: str = Field(description="the model that scored it (the manifest's model_id)")
    source_partition: int = Field(description="partition of the review on the input topic")
    source_offset: int = Field(description="offset of the review on the input topic")

    @property
    def ts_ms(self) -> int:
        return to_ms(self.ts)


class TrendSignals(_Event):
    """The numbers behind a trend call (see README, "Trend rule")."""

    recent_count: int = Field(description="reviews in the recent window (recent_days)")
    baseline_count: int = Field(description="reviews in the baseline window before it")
    recent_rate_per_day: float = Field(description="recent_count / recent_days")
    baseline_rate_per_day: float = Field(description="baseline_count / baseline_days")
    volume_ratio: float = Field(description="exp of the volume feature: the shrunk ratio "
                                "of the two rates")
    mean_score_recent: float | None = Field(description="mean text score of the recent "
                                            "window's readable reviews; null: none")
    mean_score_baseline: float | None = Field(description="mean text score of the baseline "
                                              "window; null: none")
    mean_rating_recent: float | None = Field(description="mean stars of the recent window; "
                                             "null: no rating")
    mean_rating_baseline: float | None = Field(description="mean stars of the baseline "
                                               "window; null: no rating")
    trend_index: float = Field(description="predicted ln(volume next horizon / last horizon)")
    days_since_last_review: int | None = Field(description="days from the last review to "
                                               "the evaluated day; null: none in the window")
    features: dict[str, float] = Field(default_factory=dict,
                                       description="the detector's feature values")


class TrendChange(_Event):
    """A product's trend state changed; emitted on ``trends`` only on a change."""

    schema_version: int = TREND_SCHEMA_VERSION
    event_id: str = Field(description="deterministic id (32 hex digits of a sha256 over "
                          "product_id, states, window_end, model_id, detector_version): "
                          "deduplicate on it", json_schema_extra={"pattern": _HEX32})
    product_id: str = Field(description="the product (the record key)")
    previous_state: Trend = Field(description="the state before this call")
    new_state: Trend = Field(description="the state from this call on")
    window_start: UtcDatetime = Field(description="start of the evaluated window (baseline "
                                      "and recent days)")
    window_end: UtcDatetime = Field(description="end of the window, exclusive: the call is "
                                    "made at the close of the UTC day before it")
    is_quiet: bool = Field(description="no reviews in the last quiet_days: the series went quiet")
    signals: TrendSignals
    evidence_review_ids: list[str] = Field(description="the recent reviews that weighed most "
                                           "toward the new state (ties by review_id)")
    model_id: str = Field(description="the model of the worker that made the call")
    detector_version: str = Field(description="the trend detector's version (manifest)")
    predicted_fall: float = Field(0.0, description="the detector's predicted relative fall of "
                                  "review volume (0 = none, 1 = to zero); README, 'Trend rule'")
    is_sharp_drop: bool = Field(False, description="a falling call whose predicted_fall is at "
                                "least the detector's sharp_drop_fall: also sent to trend-alerts")


class TrendState(_Event):
    """A product's current trend, on the compacted ``trend-state`` topic (key product_id).

    Written with every TrendChange, after it (README, "Current state for late joiners"):
    the latest record of a key is the product's current trend. A product with no record
    has kept its first trend, stable; a tombstone (null value, header
    ``trendstream-window-end``) says the worker forgot the product
    (``state_expire_after_days``). ``since`` orders a product's records: it grows with
    every change, and consumers keep the record with the latest one.
    """

    schema_version: int = TREND_STATE_SCHEMA_VERSION
    product_id: str
    state: Trend
    previous_state: Trend
    since: UtcDatetime = Field(description="window_end of the TrendChange that entered "
                               "the state (the call was made at the close of the day before)")
    last_event_id: str = Field(description="event_id of that TrendChange")
    is_quiet: bool = Field(description="that TrendChange's is_quiet")
    predicted_fall: float = Field(description="that TrendChange's predicted_fall")
    is_sharp_drop: bool = Field(description="that TrendChange's is_sharp_drop")
    signals: TrendSignals = Field(description="the signals of that call")
    model_id: str
    detector_version: str

    @classmethod
    def from_change(cls, change: TrendChange) -> TrendState:
        """The state a TrendChange enters: the same input always gives the same record."""
        return cls(product_id=change.product_id, state=change.new_state,
                   previous_state=change.previous_state, since=change.window_end,
                   last_event_id=change.event_id, is_quiet=change.is_quiet,
                   predicted_fall=change.predicted_fall, is_sharp_drop=change.is_sharp_drop,
                   signals=change.signals, model_id=change.model_id,
                   detector_version=change.detector_version)


class SharpDropAlert(_Event):
    """A product in the falling state whose predicted fall reached the sharp-drop level.

    Sent on ``trend-alerts`` at most once per falling episode: with the TrendChange that
    entered falling when that call is already sharp, else on the first later day close
    that is. ``alert_id`` is deterministic like a TrendChange's event_id.
    """

    schema_version: int = ALERT_SCHEMA_VERSION
    alert_id: str = Field(description="deterministic id (32 hex digits of a sha256 over "
                          "'sharp-drop', product_id, window_end, model_id, detector_version): "
                          "deduplicate on it", json_schema_extra={"pattern": _HEX32})
    product_id: str = Field(description="the product (the record key)")
    window_start: UtcDatetime = Field(description="start of the evaluated window")
    window_end: UtcDatetime = Field(description="end of the window, exclusive")
    predicted_fall: float = Field(description="1 - exp(trend_index): the relative fall of "
                                  "review volume over the next horizon the detector expects")
    threshold: float = Field(description="the detector's sharp_drop_fall")
    signals: TrendSignals
    evidence_review_ids: list[str] = Field(description="the reviews that weighed most toward "
                                           "falling (lowest text scores first; ties by id)")
    trend_event_id: str | None = Field(description="the TrendChange that entered falling, "
                                       "when it is the same evaluation")
    model_id: str = Field(description="the model of the worker that made the call")
    detector_version: str = Field(description="the trend detector's version (manifest)")


class DeadLetter(_Event):
    """A record that could not be processed, with enough context to redrive it."""

    schema_version: int = DEAD_LETTER_SCHEMA_VERSION
    reason: str = Field(description="why, a stable code (README, \"Topics and event "
                        "schemas\")")
    detail: str = Field(description="what exactly, for people (at most 1000 characters)")
    stage: DeadLetterStage
    topic: str = Field(description="the topic of the record that failed")
    partition: int = Field(description="its partition")
    offset: int = Field(description="its offset")
    key: str | None = Field(description="its key, decoded with backslash escapes")
    raw_value: str | None = Field(description="the raw value, decoded with backslash escapes, "
                                              "truncated")
    raw_size_bytes: int = Field(description="size of the whole raw value")
    raw_sha256: str | None = Field(description="sha256 of the whole raw value (null for "
                                   "a record without a value)",
                                   json_schema_extra={"pattern": "^[0-9a-f]{64}$"})
    review_id: str | None = Field(None, description="the review_id, when it is known")
    dead_lettered_at: UtcDatetime = Field(description="when the worker dead-lettered it")


def trend_event_id(*, product_id: str, previous_state: str, new_state: str,
                   window_end: datetime, model_id: str, detector_version: str) -> str:
    """Deterministic id: the same input gives the same event_id (consumers dedup on it)."""
    parts = [product_id, previous_state, new_state, _utc_iso(window_end), model_id,
             detector_version]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def alert_id(*, product_id: str, window_end: datetime, model_id: str,
             detector_version: str) -> str:
    """Deterministic id of a sharp-drop alert."""
    parts = ["sharp-drop", product_id, _utc_iso(window_end), model_id, detector_version]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


_PYDANTIC_REASONS: Final = {
    "missing": "missing_field",
    "string_too_short": "missing_field",
    "timezone_aware": "bad_timestamp",
    "datetime_type": "bad_timestamp",
    "datetime_parsing": "bad_timestamp",
    "datetime_from_date_parsing": "bad_timestamp",
    "greater_than_equal": "wrong_type",
    "less_than_equal": "wrong_type",
}


def _reason_for(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    reason = _PYDANTIC_REASONS.get(first["type"], "wrong_type")
    return reason, f"{where}: {first['msg']}"


def _decode_object(raw: bytes, *, max_event_bytes: int) -> dict[str, Any]:
    if not raw:
        raise EventError("empty_value", "the record has no value")
    if len(raw) > max_event_bytes:
        msg = f"{len(raw)} bytes > max_event_bytes={max_event_bytes}"
        raise EventError("too_large", msg)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("invalid_utf8", str(exc)) from exc
    try:
        obj = json.loads(text)
    except RecursionError as exc:  # e.g. 10,000 nested arrays
        raise EventError("invalid_json", "nested too deeply to parse") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise EventError("invalid_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise EventError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    _check_encodable(obj)
    return obj


def _check_encodable(obj: dict[str, Any]) -> None:
    """JSON may spell lone surrogates (\\ud800) that no UTF-8 text can hold: refuse them."""
    for name, value in obj.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                msg = f"{name[:64]!r}: not valid Unicode text ({exc.reason} at {exc.start})"
                raise EventError("invalid_utf8", msg) from exc


def parse_review(raw: bytes | None, *, key: bytes | None, max_event_bytes: int,
                 latest_ts: datetime | None = None) -> ReviewEvent:
    """Parse and validate one raw ``reviews`` record, or raise EventError with a reason.

    A null key is accepted (the review is re-keyed by product_id downstream); a key that
    differs from the payload's product_id is rejected as ``key_mismatch``. An event time
    after ``latest_ts`` (the worker passes its clock plus the allowed skew) is
    ``ts_out_of_range``: one far-future time would otherwise close every day of its
    partition, and all later reviews there would be late.
    """
    obj = _decode_object(raw or b"", max_event_bytes=max_event_bytes)
    version = obj.get("schema_version", REVIEW_SCHEMA_VERSION)
    if version != REVIEW_SCHEMA_VERSION:
        raise EventError("unsupported_schema_version", f"schema_version={version!r}; "
                         f"this worker reads {REVIEW_SCHEMA_VERSION}")
    rating = obj.get("rating")
    if isinstance(rating, int) and not isinstance(rating, bool):
        if abs(rating) > 5:
            raise EventError("wrong_type", f"rating: {str(rating)[:32]} is not between 0 and 5")
        obj["rating"] = float(rating)
    try:
        event = ReviewEvent.model_validate(_with_parsed_ts(obj))
    except ValidationError as exc:
        raise EventError(*_reason_for(exc)) from exc
    _check_semantics(event, key=key, latest_ts=latest_ts)
    return event


def _with_parsed_ts(obj: dict[str, Any]) -> dict[str, Any]:
    ts = obj.get("ts")
    if not isinstance(ts, str):
        return obj  # pydantic reports the missing field or the wrong type
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError as exc:
        raise EventError("bad_timestamp", f"ts: {ts[:64]!r} is not ISO-8601") from exc
    if parsed.tzinfo is None:
        raise EventError("bad_timestamp", f"ts: {ts[:64]!r} has no UTC offset")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00
        raise EventError("ts_out_of_range", f"ts: {ts[:64]!r} is outside the UTC calendar") \
            from exc
    return {**obj, "ts": parsed}


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_IDENTIFIERS: Final = ("review_id", "product_id", "category", "source")


def _check_semantics(event: ReviewEvent, *, key: bytes | None,
                     latest_ts: datetime | None) -> None:
    # Identifiers become keys, log fields and file names: a control character there is
    # refused. Texts keep theirs (real reviews hold the odd DEL; the tokenizer drops them).
    for name in _IDENTIFIERS:
        value = getattr(event, name)
        if value is not None and (found := _CONTROL.search(value)):
            msg = f"{name} holds control character U+{ord(found.group()):04X}"
            raise EventError("control_characters", msg)
    if not event.text.strip():
        raise EventError("empty_text", "text is empty or whitespace")
    if event.ts < MIN_EVENT_TIME:
        raise EventError("ts_out_of_range", f"ts {_utc_iso(event.ts)} is before 1990")
    if latest_ts is not None and event.ts > latest_ts:
        msg = f"ts {_utc_iso(event.ts)} is after {_utc_iso(latest_ts)} (now + max_future_s)"
        raise EventError("ts_out_of_range", msg)
    if key is not None and key != event.product_id.encode():
        shown = key[:64].decode("utf-8", "backslashreplace")
        msg = f"record key {shown!r} is not the payload's product_id {event.product_id!r}"
        raise EventError("key_mismatch", msg)


def dead_letter(*, reason: str, detail: str, stage: DeadLetterStage, topic: str,
                partition: int, offset: int, key: bytes | None, raw: bytes | None,
                max_raw_chars: int, review_id: str | None = None,
                now: datetime | None = None) -> DeadLetter:
    """Build the DLQ record for one bad input: reason, position, truncated raw value, hash."""
    raw_text = None if raw is None else raw.decode("utf-8", "backslashreplace")[:max_raw_chars]
    key_text = None if key is None else key.decode("utf-8", "backslashreplace")[:256]
    return DeadLetter(
        reason=reason, detail=detail[:1000], stage=stage, topic=topic, partition=partition,
        offset=offset, key=key_text, raw_value=raw_text, raw_size_bytes=len(raw or b""),
        raw_sha256=None if raw is None else hashlib.sha256(raw).hexdigest(),
        review_id=review_id, dead_lettered_at=now or datetime.now(UTC),
    )
