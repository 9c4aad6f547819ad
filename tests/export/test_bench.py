"""trendstream bench on the tiny model: every policy timed, the best named, the JSON complete."""

from pathlib import Path

import pytest

from stream.bench import NOT_MEASURED, policies, run_bench
from stream.settings import Settings

pytestmark = pytest.mark.export


def test_bench_report_names_the_fastest_policy(tiny_model_dir: Path) -> None:
    """Every raw policy has a positive rate, raw_best is the fastest, aggregate saw all reviews."""
    settings = Settings(model_dir=tiny_model_dir, ort_intra_op_threads=1)
    report = run_bench(settings, n_reviews=40, repeats=1, kafka=False)
    assert list(report["raw"]) == list(policies(settings.batch_max_size))
    rates = {name: r["reviews_per_s"] for name, r in report["raw"].items()}
    assert all(rate > 0 for rate in rates.values())
    assert report["raw_best"] == max(rates, key=lambda k: rates[k])
    assert report["aggregate"]["pure"]["events"] == 36_044  # the bundled set, all of it
    assert report["aggregate"]["pure"]["trend_changes"] > 0
    assert report["not_measured"] == list(NOT_MEASURED)  # the broker parts were skipped
    assert report["model"]["precision"] in ("fp32", "int8")
