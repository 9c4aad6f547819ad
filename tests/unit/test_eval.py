"""Evaluation protocol: product-disjoint and leave-one-dataset-out folds, metric arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from export import data
from export.evaluate import Pooled, bootstrap, dataset_name, group_split, make_folds, point_metrics

DAY = 86_400


def _pooled() -> Pooled:
    """Two datasets, 5 products each, 40 reviews per product over 400 days; labels alternate."""
    pid, ds, ts, labels = [], [], [], []
    for name in ("a", "b"):
        for p in range(5):
            for i in range(40):
                pid.append(f"{name}{p}")
                ds.append(name)
                ts.append(i * 10 * DAY)
                labels.append((i + p) % 2)
    n = len(pid)
    obj = lambda values: np.array(values, dtype=object)  # noqa: E731  (local shorthand)
    table = data.ReviewTable(review_id=obj([f"r{i}" for i in range(n)]), product_id=obj(pid),
                             source=obj(ds), ts_s=np.array(ts, dtype=np.int64),
                             text=obj(["fine"] * n), rating=np.full(n, 4.0),
                             category=obj([None] * n))
    return Pooled(table=table, labels=np.array(labels, dtype=np.int8), dataset=obj(ds),
                  fingerprints={"a": "fa", "b": "fb"})


def test_group_split_keeps_products_apart() -> None:
    """10 products x 3 rows: 2 test products, 1 validation product, 7 train; no overlap."""
    product_id = np.array([f"p{i // 3}" for i in range(30)], dtype=object)
    train, val, test = group_split(product_id, np.arange(30), test_share=0.2, val_share=0.15,
                                   rng=np.random.default_rng(0))
    assert (len(train), len(val), len(test)) == (21, 3, 6)
    parts = [set(product_id[r]) for r in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([train, val, test])) == list(range(30))


def test_folds_temporal_products_and_leave_one_dataset_out() -> None:
    """Each dataset gets a temporal fold; lodo tests on one whole dataset, trains on the other."""
    pooled = _pooled()
    folds, notes = make_folds(pooled, horizon_days=90, seed=0)
    assert [f.name for f in folds] == ["temporal:a", "temporal:b", "products", "lodo:a",
                                       "lodo:b"]
    assert notes == []
    by_name = {f.name: f for f in folds}
    for name, other in (("a", "b"), ("b", "a")):
        fold = by_name[f"lodo:{name}"]
        assert set(pooled.dataset[fold.test]) == {name} and len(fold.test) == 200
        assert set(pooled.dataset[np.concatenate([fold.train, fold.val])]) == {other}
        temporal = by_name[f"temporal:{name}"]
        gap = pooled.table.ts_s[temporal.val].min() - pooled.table.ts_s[temporal.train].max()
        assert gap >= 90 * DAY
    products = by_name["products"]
    assert not set(pooled.table.product_id[products.test]) & \
        set(pooled.table.product_id[products.train])


def test_point_metrics_by_hand() -> None:
    """y = 1 0 1 0, p = .9 .6 .4 .2: AUC 3/4, AP of "down" 5/6, Brier .1925, accuracy 1/2."""
    got = point_metrics(np.array([1.0, 0, 1, 0]), np.array([0.9, 0.6, 0.4, 0.2]))
    assert got == pytest.approx({"roc_auc": 0.75, "pr_auc_down": 5 / 6, "brier": 0.1925,
                                 "accuracy": 0.5})


def test_bootstrap_resamples_whole_products() -> None:
    """One product: every resample is the same rows, so each interval is the point value."""
    y, p = np.array([1.0, 0, 1, 0]), np.array([0.9, 0.6, 0.4, 0.2])
    one = bootstrap(y, p, np.array(["x"] * 4), n=50, rng=np.random.default_rng(0))
    assert one["roc_auc"] == {"value": 0.75, "ci90": [0.75, 0.75]}
    two = bootstrap(y, p, np.array(["x", "x", "z", "z"]), n=200, rng=np.random.default_rng(0))
    low, high = two["brier"]["ci90"]
    assert low < two["brier"]["value"] < high  # products differ: the interval opens


def test_dataset_name_is_the_review_folder() -> None:
    """data/<set>/reviews.jsonl.gz is named by its folder."""
    from pathlib import Path
    assert dataset_name(Path("data/amazon2018-5core-small/reviews.jsonl.gz")) == \
        "amazon2018-5core-small"
