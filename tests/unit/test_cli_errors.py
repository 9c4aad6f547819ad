"""The tools answer an unreachable broker with one line and exit 2, as the worker does."""

from __future__ import annotations

import pytest

from stream.cli import main
from stream.workerproc import free_port


def test_dlq_summary_without_a_broker_is_one_clear_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`trendstream dlq summary` against a closed port: exit 2, the bootstrap named."""
    bootstrap = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("TRENDSTREAM_KAFKA_BOOTSTRAP", bootstrap)
    assert main(["dlq", "summary"]) == 2
    err = capsys.readouterr().err
    assert f"trendstream: error: cannot reach Kafka at {bootstrap}" in err
    assert "Traceback" not in err
