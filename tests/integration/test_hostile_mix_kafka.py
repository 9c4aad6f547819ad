"""Hostile input on the real broker: every bad event dead-lettered with its reason, the good
ones giving exactly what they give alone (the cheap version of `make chaos`'s hostile run)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.chaos import DEFAULT_DATA, chaos_rows, read_outcome
from stream.chaoscheck import Outcome, compare, passed
from stream.events import DeadLetter
from stream.hostile import hostile_plan
from stream.settings import Settings

from .helpers import process_records, read_topic, unique_env
from .schema_check import check_outputs

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 16_384
MAX_RAW_CHARS = 300


def _run(bootstrap: str, model: Path, records: list, log: Path,
         **extra: str) -> tuple[Outcome, dict, Settings]:
    env = unique_env(bootstrap, model, TRENDSTREAM_MAX_EVENT_BYTES=str(MAX_EVENT_BYTES),
                     TRENDSTREAM_DLQ_MAX_RAW_CHARS=str(MAX_RAW_CHARS), **extra)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    stats = process_records(env, records, log, timeout_s=240)
    return asyncio.run(read_outcome(settings)), stats, settings


def test_hostile_mix_dead_letters_every_bad_event_and_changes_nothing_else(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = chaos_rows(DEFAULT_DATA, 1500)
    records, clean, expected = hostile_plan(rows, n_bad=600, seed=5,
                                            max_event_bytes=MAX_EVENT_BYTES,
                                            allowed_lateness_s=2 * 86_400,
                                            now=datetime.now(UTC), at_limit=3)
    assert sum(expected.reasons.values()) == 600 and len(expected.reasons) >= 15
    reference, _, ref_settings = _run(kafka_bootstrap, tiny_model_dir, clean,
                                      tmp_path / "reference.log")
    run, stats, settings = _run(kafka_bootstrap, tiny_model_dir, records,
                                tmp_path / "hostile.log", TRENDSTREAM_CLOUDEVENTS="true")

    assert run.dead_reasons == expected.reasons
    verdict = compare(reference, run, input_ids={str(r["review_id"]) for r in rows},
                      expected_dead=expected.dead_keys)
    extra = (run.dead - reference.dead) - expected.dead_keys
    missing = expected.dead_keys - (run.dead - reference.dead)
    lost = {pid: sorted(set(ref) - set(run.state_ids().get(pid, {})))[:5]
            for pid, ref in reference.state_ids().items()
            if set(ref) - set(run.state_ids().get(pid, {}))}
    assert passed(verdict, exactly_once=False), (verdict["detail"], list(extra.items())[:8],
                                                 list(missing.items())[:8], lost)
    assert verdict["trend_events"] == sum(len(v) for v in reference.trends.values()) > 0
    # the raw value is kept truncated; its sha256 covers all of it
    letters = [DeadLetter.model_validate_json(v) for _, _, v in
               read_topic(kafka_bootstrap, settings.topic("reviews-dlq"))]
    assert max(len(d.raw_value or "") for d in letters) == MAX_RAW_CHARS
    produced = {hashlib.sha256(v or b"").hexdigest() for _, v in records}
    assert all(d.raw_sha256 in produced for d in letters if d.stage == "score" and d.raw_value)
    # not bad: texts at the size limit (truncated to the token budget), re-sends, extra fields
    assert expected.at_limit_ids <= run.truncated_ids
    assert stats["duplicates_skipped"] == expected.resent
    assert stats["unknown_fields"] == expected.unknown_fields
    # every record of both runs is valid against schemas/; CloudEvents headers only on
    # the run that switched them on (README, "Event contracts")
    checked = check_outputs(settings, cloudevents=True)
    ref_checked = check_outputs(ref_settings, cloudevents=False)
    assert checked["review-score"] == sum(run.scored.values())
    assert ref_checked["review-score"] == sum(reference.scored.values())
    assert checked["trend-change"] == ref_checked["trend-change"] > 0
    assert checked["trend-state"] == checked["trend-change"]  # one state per change
    assert checked["sharp-drop-alert"] == ref_checked["sharp-drop-alert"] > 0
    assert checked["dlq:score"] > 0 and checked["dlq:aggregate"] > 0
