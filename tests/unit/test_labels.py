"""Trend labels, the temporal split, the data fingerprint and review-file reading (pure, fast)."""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from export.data import (
    LEFT_OUT,
    SECONDS_PER_DAY,
    balanced_sample,
    fingerprint,
    label_balance,
    read_reviews,
    temporal_split,
    trend_labels,
)
from export.errors import DataError

X = LEFT_OUT


def _series(*groups: tuple[str, str, list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(product_id, source, days) groups -> product_id, ts_s, source columns."""
    product, source, ts = [], [], []
    for pid, src, days in groups:
        product += [pid] * len(days)
        source += [src] * len(days)
        ts += [d * SECONDS_PER_DAY for d in days]
    return np.array(product, dtype=object), np.array(ts, dtype=np.int64), \
        np.array(source, dtype=object)


def test_up_down_and_equal_counts() -> None:
    """Counts in (t-H, t] vs (t, t+H] give up/down; ties and out-of-span rows are left out."""
    product, ts, source = _series(("A", "shop", [0, 10, 11, 12, 20, 25, 26, 40]))
    labels = trend_labels(product, ts, source, horizon_days=10)
    # t=0: look-back before the first review; t=10: 1 vs 3; t=11: 2 vs 2; t=12: 3 vs 1;
    # t=20: 3 vs 2; t=25: 2 vs 1; t=26: 3 vs 0; t=40: t+H after the product's last review.
    assert labels.tolist() == [X, 1, X, 0, 0, 0, 0, X]


def test_same_day_reviews_count_in_the_look_back() -> None:
    """Reviews at exactly t belong to (t-H, t], a review at exactly t-H does not."""
    product, ts, source = _series(("B", "shop", [0, 10, 10, 15, 20, 30]))
    labels = trend_labels(product, ts, source, horizon_days=10)
    # t=10 (twice): (0,10] holds 10,10 -> 2, (10,20] holds 15,20 -> 2: equal, left out;
    # t=15: (5,15] -> 3, (15,25] -> 1; t=20: (10,20] -> 2, (20,30] -> 1.
    assert labels.tolist() == [X, X, X, 0, 0, X]


def test_span_end_per_product() -> None:
    """With observation_end="product" a product's series ends at its own last review."""
    product, ts, source = _series(("A", "shop", [0, 10, 12, 14, 20]), ("C", "shop", [0, 40]))
    labels = trend_labels(product, ts, source, horizon_days=10, observation_end="product")
    # A ends at day 20: only t=10 has (t, t+10] inside it (1 vs 3). C: no room either side.
    assert labels.tolist() == [X, 1, X, X, X, X, X]


def test_span_end_per_source() -> None:
    """With observation_end="source" silence until the source's last review counts as a fall."""
    product, ts, source = _series(("A", "shop", [0, 10, 12, 14, 20]), ("C", "shop", [0, 40]),
                                  ("E", "feed2", [0, 10, 11, 12]))
    labels = trend_labels(product, ts, source, horizon_days=10, observation_end="source")
    # "shop" ends at day 40: A t=10 1 vs 3; t=12 2 vs 2; t=14 3 vs 1; t=20 3 vs 0.
    # "feed2" ends at day 12, so E's rows keep no room after them, whatever "shop" does.
    assert labels.tolist() == [X, 1, X, 0, 0, X, X, X, X, X, X]


def test_labels_ignore_row_order() -> None:
    """Rows of several products in shuffled order get the same labels as sorted rows."""
    product, ts, source = _series(("A", "shop", [0, 10, 11, 12, 20, 25, 26, 40]),
                                  ("B", "shop", [0, 10, 10, 15, 20, 30]))
    order = np.random.default_rng(3).permutation(len(ts))
    expected = trend_labels(product, ts, source, horizon_days=10)
    shuffled = trend_labels(product[order], ts[order], source[order], horizon_days=10)
    assert shuffled.tolist() == expected[order].tolist()


def test_split_keeps_horizon_gaps() -> None:
    """Every train t + H <= first val t and every val t + H <= first test t; only gap rows drop."""
    days = np.arange(100)
    labels = (days % 3 == 0).astype(np.int8)
    labels[[7, 50]] = LEFT_OUT
    ts = days * SECONDS_PER_DAY
    split = temporal_split(ts, labels, horizon_days=5)
    h = 5 * SECONDS_PER_DAY
    assert ts[split.train].max() + h <= ts[split.val].min() == split.val_start_s
    assert ts[split.val].max() + h <= ts[split.test].min() == split.test_start_s
    kept = np.concatenate([split.train, split.val, split.test])
    gap = np.flatnonzero((labels != LEFT_OUT) & ~np.isin(days, kept))
    assert all(split.val_start_s - h < ts[i] < split.val_start_s
               or split.test_start_s - h < ts[i] < split.test_start_s for i in gap)
    # 98 labelled rows; targets 68.6 / 14.7 / 14.7 with relative error, so the two 4-day
    # gaps come out of train: train days 0-63 (less 7 and 50), val 68-81, test 86-99.
    assert (split.val_start_s, split.test_start_s) == (68 * SECONDS_PER_DAY, 86 * SECONDS_PER_DAY)
    assert (len(split.train), len(split.val), len(split.test), len(gap)) == (62, 14, 14, 8)


def test_split_survives_bunched_reviews() -> None:
    """A peak that puts the 70 % and 85 % quantiles within H of each other still splits."""
    days = np.r_[np.arange(0, 200, 2), np.full(60, 210), np.arange(230, 330, 4)]
    labels = np.ones(len(days), dtype=np.int8)
    ts = days * SECONDS_PER_DAY
    split = temporal_split(ts, labels, horizon_days=30)
    assert ts[split.train].max() + 30 * SECONDS_PER_DAY <= ts[split.val].min()
    assert ts[split.val].max() + 30 * SECONDS_PER_DAY <= ts[split.test].min()
    assert min(len(split.train), len(split.val), len(split.test)) > 0


def test_split_too_short_span_raises() -> None:
    """A span shorter than the gaps raises DataError telling what to change."""
    ts = np.arange(20) * SECONDS_PER_DAY
    with pytest.raises(DataError, match="--horizon-days"):
        temporal_split(ts, np.ones(20, dtype=np.int8), horizon_days=30)


def test_fingerprint_is_stable(tmp_path: Path) -> None:
    """The fingerprint is the sha256 of the files' bytes: equal bytes, equal digest."""
    a, b, c = tmp_path / "a.jsonl", tmp_path / "sub-b.jsonl", tmp_path / "c.jsonl"
    a.write_bytes(b'{"x": 1}\n')
    b.write_bytes(b'{"x": 1}\n')
    c.write_bytes(b'{"x": 2}\n')
    assert fingerprint([a]) == fingerprint([b]) == hashlib.sha256(b'{"x": 1}\n').hexdigest()
    assert fingerprint([a, c]) == hashlib.sha256(b'{"x": 1}\n{"x": 2}\n').hexdigest()
    assert fingerprint([a]) != fingerprint([c])


def _record(review_id: str, ts: str, **extra: object) -> dict[str, object]:
    return {"review_id": review_id, "product_id": "P", "ts": ts, "rating": 5, "title": "Nice",
            "text": "Works.", "category": "c", "source": "s", **extra}


def test_read_reviews_jsonl_and_gz(tmp_path: Path) -> None:
    """Plain and gzipped files are merged, sorted by time, with the worker's title + text."""
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    plain.write_text(json.dumps(_record("r2", "2017-01-02T00:00:00Z")) + "\n\n")
    with gzip.open(packed, "wt") as f:
        f.write(json.dumps(_record("r1", "2017-01-01T00:00:00Z", title=None)) + "\n")
    table = read_reviews([plain, packed])
    assert table.review_id.tolist() == ["r1", "r2"]
    assert table.text.tolist() == ["Works.", "Nice. Works."]
    assert table.ts_s.tolist() == [1483228800, 1483315200]


@pytest.mark.parametrize(("line", "problem"), [
    ("{not json", "Expecting property name"),
    (json.dumps(_record("r9", "2017-01-01T00:00:00Z", text=" ")), "'text'"),
    (json.dumps(_record("r9", "2017-01-01T00:00:00")), "no UTC offset"),
])
def test_bad_record_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    """A bad record raises DataError naming the file, the line number and the problem."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record("r1", "2017-01-01T00:00:00Z")) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: bad review record .*{problem}"):
        read_reviews([path])


def test_duplicate_review_id_is_refused(tmp_path: Path) -> None:
    """The same file passed twice is refused instead of counting every review twice."""
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(_record("r1", "2017-01-01T00:00:00Z")) + "\n")
    with pytest.raises(DataError, match=r"already read at .*a\.jsonl:1"):
        read_reviews([path, path])


def test_balanced_sample_round_robin() -> None:
    """Each (product, label) cell gives one row per round until n rows are drawn."""
    product = np.array(["a"] * 10 + ["b"] * 3, dtype=object)
    labels = np.array([1] * 8 + [0] * 2 + [1] * 3, dtype=np.int8)
    picked = balanced_sample(product, labels, n=7, rng=np.random.default_rng(0))
    cells = [f"{p}{y}" for p, y in zip(product[picked], labels[picked], strict=True)]
    # two full rounds over 3 cells (6 rows), then one row from a cell that still has rows
    assert sorted(cells).count("a0") == 2 and len(picked) == len(set(picked)) == 7
    assert {cells.count("a1"), cells.count("b1")} == {2, 3}
    assert label_balance(labels) == {"n": 13, "up": 11, "down": 2, "up_rate": 11 / 13}
