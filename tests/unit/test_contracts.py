"""The checked-in JSON Schemas: generated from the code, valid, and true to the parser."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import Field, create_model

from stream import contracts
from stream.errors import EventError
from stream.events import (
    ReviewScore,
    TrendChange,
    TrendState,
    dead_letter,
    parse_review,
)
from stream.hostile import hostile_plan
from stream.settings import REPO_ROOT
from stream.trends import DetectorParams, close_through
from stream.webhooks import trendstream_payload
from stream.windows import ProductState

SCHEMAS = REPO_ROOT / "schemas"
DATA = REPO_ROOT / "data" / "datafiniti-amazon-devices" / "reviews.jsonl.gz"
NOW = datetime(2026, 12, 4, tzinfo=UTC)
# what the parser refuses and the schema says too
SHAPE_REASONS = {"not_an_object", "unsupported_schema_version", "missing_field", "wrong_type",
                 "empty_text", "bad_timestamp", "control_characters"}
# what only the parser can know: bytes, the record key, the clock, the stream's state
BEYOND_SCHEMA = {"too_large", "ts_out_of_range", "key_mismatch", "invalid_utf8",
                 "duplicate_conflict", "late"}


def _validator(name: str, *, closed: bool = False) -> Draft202012Validator:
    schema = contracts.load(SCHEMAS, name)
    return Draft202012Validator(contracts.closed(schema) if closed else schema,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_checked_in_schemas_are_what_the_code_generates() -> None:
    """schemas/ holds exactly the files `trendstream schemas` writes (else: regenerate)."""
    assert contracts.differences(SCHEMAS) == [], "run: trendstream schemas --out schemas"


def test_a_field_changed_without_regenerating_is_caught(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A new field in TrendChange makes the check name trend-change.schema.json."""
    changed = create_model("TrendChange", __base__=TrendChange,
                           confidence=(float, Field(description="a new field")))
    real = contracts.contracts()
    monkeypatch.setattr(contracts, "contracts", lambda: [
        contracts.Contract(c.name, changed, c.version, c.where) if c.name == "trend-change"
        else c for c in real])
    assert contracts.differences(SCHEMAS) == [
        f"{SCHEMAS / 'trend-change.schema.json'}: differs from the code"]


def test_every_schema_is_draft_2020_12_with_an_id_and_a_version() -> None:
    """Each file is a valid 2020-12 schema with $id, title, description, schema_version."""
    ids = set()
    for contract in contracts.contracts():
        schema = contracts.load(SCHEMAS, contract.name)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:trendstream:schema:{contract.name}:v{contract.version}"
        assert schema["title"] and schema["description"]
        assert schema["properties"]["schema_version"]["const"] == contract.version
        assert ("schema_version" in schema["required"]) is not contract.is_input
        ids.add(schema["$id"])
    assert len(ids) == len(contracts.contracts())


def test_date_time_formats_are_really_checked() -> None:
    """Format checking is on (rfc3339-validator installed): a bad time is refused."""
    assert "date-time" in Draft202012Validator.FORMAT_CHECKER.checkers
    good = json.loads(GOOD)
    assert _validator("review-event").is_valid(good)
    assert not _validator("review-event").is_valid({**good, "ts": "2017-02-30T00:00:00Z"})


def _rows(n: int) -> list[dict[str, Any]]:
    """The first n bundled Datafiniti reviews, in event-time order."""
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, n)]
    return sorted(rows, key=lambda r: (r["ts"], r["review_id"]))


def _parse(key: bytes | None, value: bytes | None) -> str:
    """'accepted', or the dead-letter reason the parser gives."""
    try:
        parse_review(value, key=key, max_event_bytes=8192, latest_ts=NOW + timedelta(days=1))
    except EventError as exc:
        return exc.reason
    return "accepted"


def test_the_input_schema_agrees_with_the_parser_on_hostile_events() -> None:
    """Bundled reviews and 3,000 hostile ones: every review the parser accepts is valid;
    every one it refuses for its shape is not; the rest are what only the parser sees."""
    records, _, expected = hostile_plan(_rows(1500), n_bad=3000, seed=7, max_event_bytes=8192,
                                        allowed_lateness_s=172_800, now=NOW, at_limit=4)
    validator = _validator("review-event")
    seen: Counter[tuple[str, bool]] = Counter()
    for key, value in records:
        try:
            obj = json.loads(value or b"")
        except (ValueError, RecursionError):
            continue  # not JSON (or not UTF-8): nothing for a schema to say
        reason = _parse(key, value)
        is_valid = validator.is_valid(obj)
        seen[reason, is_valid] += 1
        if reason == "accepted":
            assert is_valid, (value[:200], list(validator.iter_errors(obj))[:1])
        elif reason in SHAPE_REASONS:
            assert not is_valid, (reason, value[:200])
        else:
            assert reason in BEYOND_SCHEMA and is_valid, (reason, value[:200])
    assert {r for r, _ in seen} >= SHAPE_REASONS | {"accepted", "too_large", "key_mismatch",
                                                    "ts_out_of_range"}
    assert seen["accepted", True] >= 1500 and expected.unknown_fields > 0


GOOD = json.dumps({"review_id": "r1", "product_id": "p1", "ts": "2017-01-02T00:00:00Z",
                   "text": "Great", "rating": 5, "title": None, "source": "s", "category": "c"})


@pytest.mark.parametrize(("changes", "reason", "is_valid"), [
    ({}, "accepted", True),
    ({"schema_version": 1, "extra": {"a": 1}}, "accepted", True),
    ({"rating": 0}, "accepted", True),
    ({"rating": 4.5, "title": "t"}, "accepted", True),
    ({"rating": None, "category": None, "source": None}, "accepted", True),
    ({"ts": "2017-01-02T03:04:05.123456+02:00"}, "accepted", True),
    ({"review_id": "r" * 256}, "accepted", True),
    ({"rating": True}, "wrong_type", False),
    ({"rating": 5.01}, "wrong_type", False),
    ({"rating": -1}, "wrong_type", False),
    ({"review_id": "r" * 257}, "wrong_type", False),
    ({"category": "c" * 257}, "wrong_type", False),
    ({"product_id": ["p1"]}, "wrong_type", False),
    ({"title": 7}, "wrong_type", False),
    ({"ts": 1483315200}, "bad_timestamp", False),
    ({"ts": "2017-01-02"}, "bad_timestamp", False),
    ({"review_id": ""}, "missing_field", False),
    ({"review_id": "r1\n"}, "control_characters", False),
    ({"source": "s\x85"}, "control_characters", False),
    ({"text": "\u3000\n"}, "empty_text", False),
    ({"schema_version": 2}, "unsupported_schema_version", False),
    ({"schema_version": "1"}, "unsupported_schema_version", False),
    # the parser is more lenient than the contract here: producers must not rely on it
    ({"ts": "2017-01-02 00:00:00+00:00"}, "accepted", False),
    ({"ts": "20170102T000000Z"}, "accepted", False),
])
def test_input_edge_cases(changes: dict[str, Any], reason: str, is_valid: bool) -> None:
    """Hand-picked edges of the contract: the parser's reason and the schema's verdict."""
    obj = {**json.loads(GOOD), **changes}
    assert _parse(b"p1", json.dumps(obj).encode()) == reason
    assert _validator("review-event").is_valid(obj) is is_valid


def _samples() -> list[tuple[str, Any]]:
    """Records of every output contract as the worker's pure code builds them."""
    state = ProductState("p1", 0)
    for day in range(180):
        for i in range(2):
            state.add((f"r{day:05d}-{i}", "h", 0.25, 4.0), 17_167 + day)
    out = close_through(state, 17_167 + 400, DetectorParams(), model_id="m1", evidence_k=3)
    assert len(out.changes) == 3 and len(out.alerts) == 1
    score = ReviewScore(review_id="r1", product_id="p1", ts=NOW, score=0.25, is_text_used=True,
                        unk_ratio=0.0, n_tokens=12, is_truncated=False, rating=None,
                        category=None, content_sha256="0123456789abcdef", model_id="m1",
                        source_partition=0, source_offset=5)
    letters = [dead_letter(reason="invalid_json", detail="x", stage="score", topic="reviews",
                           partition=1, offset=2, key=None, raw=None, max_raw_chars=10),
               dead_letter(reason="late", detail="y", stage="aggregate", topic="batches",
                           partition=1, offset=3, key=b"p1", raw=b'{"a": "\xff"}',
                           max_raw_chars=10, review_id="r1")]
    samples = [("review-score", score), *[("trend-change", c) for c in out.changes],
               *[("trend-state", TrendState.from_change(c)) for c in out.changes],
               ("sharp-drop-alert", out.alerts[0]), *[("dead-letter", d) for d in letters]]
    samples.append(("alert-webhook-payload", trendstream_payload(out.alerts[0])))
    return samples


def test_outputs_of_the_pure_code_are_valid_and_fully_documented() -> None:
    """A sample of every output contract (scores, trend changes and states, an alert,
    dead letters, the webhook body) validates, also against the closed schema (no
    undocumented field)."""
    samples = _samples()
    assert {n for n, _ in samples} == {c.name for c in contracts.contracts()
                                       if not c.is_input}
    for name, event in samples:
        record = json.loads(event.to_bytes())
        for closed in (False, True):
            errors = list(_validator(name, closed=closed).iter_errors(record))
            assert not errors, (name, closed, errors[:1])


def test_output_schemas_refuse_what_the_worker_never_writes() -> None:
    """Wrong type, missing field, local time, unknown trend state: refused; an extra field
    is allowed by the published (open) schema and refused by the closed one."""
    letter = json.loads(dead_letter(reason="late", detail="d", stage="score", topic="t",
                                    partition=0, offset=0, key=b"k", raw=b"{}",
                                    max_raw_chars=10).to_bytes())
    assert _validator("dead-letter").is_valid({**letter, "reason": "a_new_reason",
                                               "stage": "a_new_stage"})
    for bad in ({**letter, "offset": "0"}, {k: v for k, v in letter.items() if k != "key"},
                {**letter, "dead_lettered_at": "2017-01-02T00:00:00+01:00"},
                {**letter, "schema_version": 2}, {**letter, "raw_sha256": "ab"}):
        assert not _validator("dead-letter").is_valid(bad)
    extra = {**letter, "new_optional_field": 1}
    assert _validator("dead-letter").is_valid(extra)
    assert not _validator("dead-letter", closed=True).is_valid(extra)
    sha = hashlib.sha256(b"x").hexdigest()
    assert _validator("dead-letter").is_valid({**letter, "raw_sha256": sha})
