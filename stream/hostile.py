"""Hostile input: bad events spliced among good ones, with what each must become. Pure.

:func:`hostile_plan` takes good reviews in replay order and returns the records to
produce plus :class:`Expected`: for every bad event the dead-letter reason it must get,
and the key its dead letter is counted under (the raw value's sha256 for events the
scorer refuses; the review_id for those the aggregator refuses, whose dead letter holds
the scored review). Kinds, each a stable DLQ reason (README, "Dead letters"):

invalid JSON (cut short, nested 100,000 deep), invalid UTF-8 (bytes, lone surrogates),
not an object, empty values and tombstones, unsupported schema versions, missing
required fields, wrong types, empty texts, values above ``max_event_bytes``, control
characters in identifiers, event times before 1990, past the worker's clock or off the
calendar, unreadable times, record keys that are not the product_id, review_ids seen
before with other content, and events later than the allowed lateness.

Not bad, and counted instead: an exact re-send of a review (skipped as a duplicate),
unknown extra fields (ignored), and texts exactly at ``max_event_bytes`` (truncated to
the model's token budget; their ReviewScore says ``is_truncated``). Those at-limit
reviews go to products of their own (``hostile-at-limit-*``). They and the unknown
fields are good input: the reference run gets them too (they move stream time on their
partitions), and every product must end exactly as there.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stream.replay import Record

AT_LIMIT_PREFIX = "hostile-at-limit-"
_FMT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class Expected:
    """What the worker must make of the spliced-in events."""

    reasons: Counter[str] = field(default_factory=Counter)
    dead_keys: Counter[str] = field(default_factory=Counter)  # as chaoscheck.Outcome counts
    resent: int = 0
    unknown_fields: int = 0
    at_limit_ids: set[str] = field(default_factory=set)
    score_stage: dict[str, str] = field(default_factory=dict)  # raw sha256 -> reason

    def bad(self, reason: str, key: str) -> None:
        self.reasons[reason] += 1
        self.dead_keys[key] += 1


def _sha(value: bytes | None) -> str:
    """How a dead letter of this value is counted (a tombstone's letter has no hash)."""
    return "" if value is None else hashlib.sha256(value).hexdigest()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _sized(row: dict[str, Any], size: int) -> bytes:
    """The row as JSON of exactly ``size`` bytes, its text padded with real words."""
    base = _dump(dict(row, text=""))
    plain = re.sub(r"[^A-Za-z ]+", "", str(row["text"])) or "review"  # 1 byte a character
    words = (plain + " ") * (size // len(plain) + 2)
    value = _dump(dict(row, text=words[:size - len(base)]))
    assert len(value) == size, (len(value), size)
    return value


def _score_stage(max_event_bytes: int, now: datetime) -> list[tuple[str, int, Callable[
        [dict[str, Any], bytes, random.Random], Record]]]:
    """(reason, weight, make(template row, its key, rng)) for events the scorer refuses."""
    future = (now + timedelta(days=3650)).strftime(_FMT)

    def drop(name: str) -> Callable[[dict[str, Any], bytes, random.Random], Record]:
        return lambda r, k, _: (k, _dump({n: v for n, v in r.items() if n != name}))

    def with_(**changes: Any) -> Callable[[dict[str, Any], bytes, random.Random], Record]:
        return lambda r, k, _: (k, _dump(dict(r, **changes)))

    return [
        ("invalid_json", 8, lambda r, k, rng: (k, _dump(r)[:rng.randrange(1, 40)])),
        ("invalid_json", 1, lambda r, k, _: (k, b"[" * min(100_000, max_event_bytes))),
        ("invalid_utf8", 6, lambda r, k, _: (k, _dump(r).replace(b'"text": "',
                                                               b'"text": "\xff\xfe\xc3\x28'))),
        ("invalid_utf8", 2, lambda r, k, _: (k, json.dumps(dict(r, text="\ud800 broken"))
                                             .encode())),
        ("not_an_object", 3, lambda r, k, _: (k, _dump([r]))),
        ("not_an_object", 1, lambda r, k, _: (k, b'"just a string"')),
        ("empty_value", 2, lambda r, k, _: (k, b"")),
        ("empty_value", 2, lambda r, k, _: (k, None)),
        ("unsupported_schema_version", 2, with_(schema_version=2)),
        ("missing_field", 3, drop("text")),
        ("missing_field", 3, drop("ts")),
        ("missing_field", 2, drop("review_id")),
        ("missing_field", 2, lambda r, k, _: (None, _dump(dict(r, product_id="")))),
        ("wrong_type", 3, with_(rating="five stars")),
        ("wrong_type", 2, with_(rating=7)),
        ("wrong_type", 2, lambda r, k, _: (k, _dump(dict(r, review_id=12345)))),
        ("wrong_type", 2, with_(text=["not", "a", "string"])),
        ("empty_text", 3, with_(text="")),
        ("empty_text", 2, with_(text=" \n\t ")),
        ("too_large", 1, lambda r, k, rng: (k, _sized(r, max_event_bytes +
                                                      rng.randrange(1, 4096)))),
        ("control_characters", 3, lambda r, k, _: (k, _dump(dict(
            r, review_id=f"{r['review_id']}\x00x")))),
        ("control_characters", 2, lambda r, k, _: (k, _dump(dict(r, category="\x1b[31mred")))),
        ("ts_out_of_range", 3, with_(ts="1989-12-31T23:59:59Z")),
        ("ts_out_of_range", 3, with_(ts=future)),
        ("ts_out_of_range", 1, with_(ts="9999-12-31T23:59:59Z")),
        ("ts_out_of_range", 1, with_(ts="0001-01-01T00:00:00+01:00")),
        ("bad_timestamp", 2, with_(ts="last tuesday")),
        ("bad_timestamp", 2, with_(ts="2017-01-01T00:00:00")),
        ("key_mismatch", 4, lambda r, k, _: (b"not-" + k, _dump(
            dict(r, review_id=f"{r['review_id']}~key")))),
    ]


def hostile_plan(rows: list[dict[str, Any]], *, n_bad: int, seed: int, max_event_bytes: int,
                 allowed_lateness_s: float, now: datetime,
                 at_limit: int = 10) -> tuple[list[Record], list[Record], Expected]:
    """Good ``rows`` (in replay order) with ``n_bad`` bad events and the not-bad oddities
    spliced in at seeded places. Returns the records, the good ones alone (the reference
    run's input: the rows, some with unknown fields, and the at-limit reviews) and what
    the bad ones must become."""
    rng = random.Random(seed)
    expected = Expected()
    kinds = _score_stage(max_event_bytes, now)
    weights = [w for _, w, _ in kinds]
    good: list[Record] = []
    for i, row in enumerate(rows):
        if i % 7 == 3:  # unknown fields: ignored, counted
            row = dict(row, x_unknown_field={"from": "a newer producer"})
            expected.unknown_fields += 1
        good.append((str(row["product_id"]).encode(), _dump(row)))
    # after[i]: records to send right after good record i
    after: dict[int, list[Record]] = {}
    start = min(len(rows) - 1, 1000)  # late events need a stream time that has moved on
    lateness = timedelta(seconds=allowed_lateness_s) + timedelta(days=10)
    for _ in range(n_bad):
        i = rng.randrange(start, len(rows))
        row, key = rows[i], good[i][0]
        pick = rng.random()
        if pick < 0.05:  # the review_id of the review just sent, other content
            value = _dump(dict(row, text=str(row["text"]) + " (edited)"))
            after.setdefault(i, []).append((key, value))
            expected.bad("duplicate_conflict", str(row["review_id"]))
        elif pick < 0.10:  # far older than the partition's stream time allows
            ts = (datetime.fromisoformat(row["ts"]) - lateness).strftime(_FMT)
            review_id = f"{row['review_id']}~late{rng.randrange(10**9)}"
            after.setdefault(i, []).append((key, _dump(dict(row, review_id=review_id, ts=ts))))
            expected.bad("late", review_id)
        else:
            reason, _, make = rng.choices(kinds, weights)[0]
            record = make(row, key, rng)
            after.setdefault(i, []).append(record)
            expected.bad(reason, _sha(record[1]))
            expected.score_stage[_sha(record[1])] = reason
    for _ in range(max(1, n_bad // 50)):  # an exact re-send: a duplicate, skipped
        i = rng.randrange(start, len(rows))
        after.setdefault(i, []).append(good[i])
        expected.resent += 1
        expected.unknown_fields += int(i % 7 == 3)  # the copy carries them too
    for j in range(at_limit):  # at the size limit: good, truncated by token budget
        i = rng.randrange(start, len(rows))
        pid = f"{AT_LIMIT_PREFIX}{j}"
        row = dict(rows[i], product_id=pid, review_id=f"{pid}-review")
        after.setdefault(i, []).append((pid.encode(), _sized(row, max_event_bytes)))
        expected.at_limit_ids.add(str(row["review_id"]))
    records: list[Record] = []
    clean: list[Record] = []
    for i, record in enumerate(good):
        records.append(record)
        records += after.get(i, [])
        clean.append(record)
        clean += [r for r in after.get(i, []) if r[0] and r[0].startswith(
            AT_LIMIT_PREFIX.encode())]
    return records, clean, expected
