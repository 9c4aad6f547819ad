"""A model rollout in place: the worker restarts with another model_id on the same app_id.

What the README ("Event contracts", "Model rollout") says happens, checked on the real
broker: window and trend state carry over; reviews already counted keep the score of
the model that scored them (a re-sent one is scored again by the new model, and skipped
by the aggregator); windows mix both models' scores until the old reviews leave the
lookback; calls made from the restart on carry the new model_id, so their event_ids
differ from the ones the old model would have given; nothing emitted before is re-sent.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stream.artifact import load_model_dir, read_manifest
from stream.events import ReviewScore, SharpDropAlert, TrendChange, alert_id, trend_event_id
from stream.replay import plan
from stream.settings import Settings
from stream.windows import quantize_score

from .helpers import process_records, read_topic, unique_env
from .schema_check import check_outputs
from .test_worker_kafka import START, _same_partition_ids, _series

pytestmark = pytest.mark.integration
SWITCH_DAY = 50  # the old model gets the reviews of days 0-49, the new one the rest
RESENT_DAYS = range(44, 50)  # product a's reviews of these days are sent again after it


def _second_model(model_a: Path, target: Path) -> str:
    """A copy of the model with another model_id whose CPU default is the fp32 graph (the
    old one scores with int8): other scores, a manifest the worker's checks accept."""
    shutil.copytree(model_a, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["model_id"] += "-b"
    manifest["default_variant"]["cpu"] = "fp32"
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return load_model_dir(target).model_id  # checksums and format still pass


def _day(ts: datetime) -> int:
    return (ts - START).days


def _mean(scores: list[ReviewScore]) -> float | None:
    """The window's mean text score as the state keeps it (quantized, exactly summed)."""
    kept = [quantize_score(s.score) for s in scores if s.is_text_used]
    return math.fsum(kept) / len(kept) if kept else None


def _expected(a: str, b: str, old: str, new: str) -> set[tuple[str, str, str, str]]:
    """The golden change days (test_worker_kafka) with the model of the worker that made
    each call: the close of day D (window end D + 1) before the switch is the old one's."""
    days = {a: [("stable", "rising", 10), ("rising", "stable", 78), ("stable", "falling", 193)],
            b: [("stable", "rising", 20), ("rising", "stable", 78)]}
    return {(pid, prev, nxt, trend_event_id(
        product_id=pid, previous_state=prev, new_state=nxt,
        window_end=START + timedelta(days=end), detector_version="volume-v1",
        model_id=old if end <= SWITCH_DAY - 1 else new))
        for pid, changes in days.items() for prev, nxt, end in changes}


def test_a_restart_with_a_new_model_keeps_state_and_old_scores(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Old model on days 0-49, new model on days 50-399 (plus re-sent old reviews): the
    trend calls are the one-model run's, each under the model that made it."""
    old = read_manifest(tiny_model_dir).model_id
    new = _second_model(tiny_model_dir, tmp_path / "model-b")
    env = unique_env(kafka_bootstrap, tiny_model_dir, TRENDSTREAM_ALLOWED_LATENESS_S="0")
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    a, b = _same_partition_ids(2)
    rows = _series(a, b)
    before = [r for r in rows if _day(datetime.fromisoformat(str(r["ts"]))) < SWITCH_DAY]
    after = rows[len(before):]
    resent = [r for r in before if r["product_id"] == a
              and _day(datetime.fromisoformat(str(r["ts"]))) in RESENT_DAYS]
    process_records(env, plan(before, malformed=0, seed=0), tmp_path / "worker-a.log")
    stats = process_records({**env, "TRENDSTREAM_MODEL_DIR": str(tmp_path / "model-b")},
                            plan(resent + after, malformed=0, seed=0),
                            tmp_path / "worker-b.log")
    assert (stats["accepted"], stats["duplicates_skipped"]) == (len(after), len(resent))

    # scores: each review once, by the model that first got it; re-sent ones twice
    scores = [ReviewScore.model_validate_json(v) for _, _, v in
              read_topic(kafka_bootstrap, settings.topic("review-scores"))]
    by_id: dict[str, list[ReviewScore]] = {}
    for s in scores:
        by_id.setdefault(s.review_id, []).append(s)
    resent_ids = {str(r["review_id"]) for r in resent}
    assert {i: [s.model_id for s in v] for i, v in by_id.items()} == {
        **{str(r["review_id"]): [old] for r in before},
        **{str(r["review_id"]): [new] for r in after},
        **{i: [old, new] for i in resent_ids}}
    assert any(by_id[i][0].score != by_id[i][1].score for i in resent_ids)  # other model

    # trend calls: exactly the one-model run's transitions, each under its model's id
    changes = [TrendChange.model_validate_json(v) for _, _, v in
               read_topic(kafka_bootstrap, settings.topic("trends"))]
    assert {(c.product_id, c.previous_state, c.new_state, c.event_id) for c in changes} == \
        _expected(a, b, old, new)
    assert len(changes) == 5  # nothing re-sent at the restart
    assert all(c.model_id == (old if _day(c.window_end) < SWITCH_DAY else new)
               for c in changes)
    [alert] = [SharpDropAlert.model_validate_json(v) for _, _, v in
               read_topic(kafka_bootstrap, settings.topic("trend-alerts"))]
    assert alert.alert_id == alert_id(product_id=a, window_end=START + timedelta(days=199),
                                      model_id=new, detector_version="volume-v1")

    # a's rising -> stable at the close of day 77, made by the new model: its baseline
    # (days 0-47) holds old-model scores only, its recent window (days 48-77) both
    call = next(c for c in changes if c.product_id == a and c.new_state == "stable")
    def counted(first_day: int, last_day: int, which: int) -> list[ReviewScore]:
        """a's scores of those days: the first one of each review (what the window
        counted, which=0) or the last one (what re-scoring them would give, which=-1)."""
        return [v[which] for v in by_id.values()
                if v[0].product_id == a and first_day <= _day(v[0].ts) <= last_day]

    recent, baseline = counted(48, 77, 0), counted(0, 47, 0)
    assert {s.model_id for s in recent} == {old, new} and {s.model_id for s in baseline} == {old}
    got = (call.signals.mean_score_recent, call.signals.mean_score_baseline)
    assert got == (_mean(recent), _mean(baseline))
    assert got != (_mean(counted(48, 77, -1)), _mean(counted(0, 47, -1)))
    checked = check_outputs(settings, cloudevents=False)
    assert checked["trend-change"] == 5 and checked["review-score"] == len(scores)
