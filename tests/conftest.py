"""Session fixtures: the real Kafka broker and a tiny exported model, both built here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_broker import start_broker  # tests/ is not a package: path set above


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka broker for the whole session (or TRENDSTREAM_KAFKA_BOOTSTRAP)."""
    bootstrap, stop = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield bootstrap
    finally:
        stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised model, trained briefly and exported by the real code."""
    from export.cli import main as export_main

    out = tmp_path_factory.mktemp("model") / "tiny"
    assert export_main(["--tiny", "--out", str(out), "--max-train-examples", "256",
                        "--max-epochs", "1", "--detector", "defaults"]) == 0
    return out
