"""Check every record a real run wrote against the checked-in schemas (and its headers)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from datetime import datetime

from jsonschema import Draft202012Validator

from stream import contracts
from stream.benchkafka import Stored, read_all
from stream.settings import REPO_ROOT, Settings

SCHEMAS = REPO_ROOT / "schemas"
# output topic setting -> (contract, the field its ce_id is, the field its ce_time is)
OUTPUTS = {"topic_scores": ("review-score", None, "ts"),
           "topic_trends": ("trend-change", "event_id", "window_end"),
           "topic_trend_state": ("trend-state", None, "since"),
           "topic_alerts": ("sharp-drop-alert", "alert_id", "window_end"),
           "topic_dlq": ("dead-letter", None, "dead_lettered_at")}
CE_TYPE = re.compile(r"^io\.trendstream\.[a-z_]+\.[a-z_]+\.v1$")


def validator(name: str, *, closed: bool = False) -> Draft202012Validator:
    """A format-checking validator of a checked-in schema (``closed``: no extra fields)."""
    schema = contracts.load(SCHEMAS, name)
    return Draft202012Validator(contracts.closed(schema) if closed else schema,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def _sha32(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _expected_id(name: str, id_field: str | None, record: dict) -> str:
    if id_field is not None:
        return record[id_field]
    if name == "review-score":
        return _sha32(record["review_id"], record["model_id"])
    if name == "trend-state":
        return _sha32("trend-state", record["last_event_id"])
    return _sha32(record["topic"], record["partition"], record["offset"], record["reason"])


def _check_headers(name: str, stored: Stored, record: dict, *, cloudevents: bool,
                   settings: Settings) -> None:
    found = dict(stored.headers)
    assert len(found) == len(stored.headers), stored.headers  # no header twice
    if not cloudevents:
        assert not [k for k in found if k.startswith("ce_") or k == "content-type"], found
        return
    _, id_field, time_field = next(v for v in OUTPUTS.values() if v[0] == name)
    text = {k: v.decode() for k, v in found.items()}
    assert text["ce_specversion"] == "1.0"
    assert text["ce_id"] == _expected_id(name, id_field, record)
    assert text["ce_source"] == f"/trendstream/{settings.app_id}"
    assert CE_TYPE.match(text["ce_type"]), text["ce_type"]
    assert text["ce_time"] == record[time_field]
    datetime.fromisoformat(text["ce_time"])  # RFC 3339 (the schema checks its format too)
    assert text["ce_dataschema"] == f"urn:trendstream:schema:{name}:v1"
    assert text["content-type"] == "application/json"


def check_outputs(settings: Settings, *, cloudevents: bool) -> Counter[str]:
    """Read the five output topics to their end; every value must be valid against its
    schema (open and closed), keyed by product_id, with CloudEvents headers exactly when
    ``cloudevents``. Return the records checked per contract (and ``dlq:<stage>``)."""
    checked: Counter[str] = Counter()
    for setting, (name, _, _) in OUTPUTS.items():
        records = asyncio.run(read_all(settings.kafka_bootstrap,
                                       settings.topic(getattr(settings, setting)),
                                       partitions=settings.partitions, timeout_s=30))
        open_schema, closed_schema = validator(name), validator(name, closed=True)
        for stored in records:
            if stored.value is None:  # a trend-state tombstone: no record, no event
                assert name == "trend-state" and not [
                    k for k, _ in stored.headers if k.startswith("ce_")], stored
                checked["tombstone"] += 1
                continue
            record = json.loads(stored.value)
            errors = list(open_schema.iter_errors(record)) or \
                list(closed_schema.iter_errors(record))
            assert not errors, (name, errors[0].message, record)
            key = record.get("product_id", record.get("key") or "")
            assert (stored.key or b"") == key.encode(), (name, stored.key, key)
            _check_headers(name, stored, record, cloudevents=cloudevents, settings=settings)
            checked[name] += 1
            if name == "dead-letter":
                checked[f"dlq:{record['stage']}"] += 1
    return checked
