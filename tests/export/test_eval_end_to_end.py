"""trendstream eval end to end on the bundled data with the tiny exported model."""

from pathlib import Path

import pytest

from export.evaluate import EvalBudget, run_eval
from export.pipeline import DEFAULT_DATA
from stream.settings import REPO_ROOT

pytestmark = pytest.mark.export
SMALL = REPO_ROOT / "data" / "amazon2018-5core-small" / "reviews.jsonl.gz"


def test_eval_scores_the_published_model_only_on_unseen_folds(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    """The model trained on Datafiniti is scored on its held-out period and on amazon2018 only."""
    budget = EvalBudget(n_bootstrap=20, max_test_examples=300)
    report = run_eval([DEFAULT_DATA, SMALL], model_dir=tiny_model_dir, out=tmp_path,
                      budget=budget, methods=["prior", "rating-lr"])
    folds = report["folds"]
    assert list(folds) == ["temporal:amazon2018-5core-small",
                           "temporal:datafiniti-amazon-devices", "products",
                           "lodo:amazon2018-5core-small", "lodo:datafiniti-amazon-devices"]
    with_default = sorted(f for f, v in folds.items() if "default-int8" in v["methods"])
    assert with_default == ["lodo:amazon2018-5core-small", "temporal:amazon2018-5core-small",
                            "temporal:datafiniti-amazon-devices"]
    for fold in folds.values():
        assert fold["methods"]["prior"]["roc_auc"]["value"] == 0.5
        for m in fold["methods"].values():
            assert 0.0 <= m["brier"]["value"] <= 1.0
            lo, hi = m["accuracy"]["ci90"]
            assert lo <= m["accuracy"]["value"] <= hi
    assert (tmp_path / "eval.md").read_text().count("| temporal:datafiniti-amazon-devices |") >= 4
    again = run_eval([DEFAULT_DATA, SMALL], model_dir=tiny_model_dir, out=tmp_path,
                     budget=budget, methods=["prior", "rating-lr"])
    assert again["folds"] == folds  # every (fold, method) came from the cache
