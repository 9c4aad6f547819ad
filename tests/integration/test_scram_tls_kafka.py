"""SASL/SCRAM over TLS against a local broker configured for it (certificates made here):
the worker and the tools work through it, a wrong password fails fast and clearly, and the
secret shows up in no log, setting dump, event or dead letter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.kafkaconf import client_options
from stream.settings import REPO_ROOT, Settings

from .helpers import process_records, read_topic, secure_broker, unique_env

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    bool(os.environ.get("TRENDSTREAM_KAFKA_BOOTSTRAP")),
    reason="starts its own SCRAM/TLS broker; not with an external cluster")]

USER = "trend-app"


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A broker with a SCRAM-over-TLS listener and the worker's user."""
    with secure_broker(tmp_path_factory.mktemp("secure-kafka"), USER) as broker:
        yield {**broker, "bootstrap": broker["secure"]}


def _env(broker: dict[str, str], model: Path, **extra: str) -> dict[str, str]:
    settings = {"TRENDSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
                "TRENDSTREAM_SASL_MECHANISM": "SCRAM-SHA-512", "TRENDSTREAM_SASL_USERNAME": USER,
                "TRENDSTREAM_SASL_PASSWORD_FILE": broker["password_file"],
                "TRENDSTREAM_SSL_CAFILE": broker["cafile"], **extra}
    return unique_env(broker["bootstrap"], model, **settings)


def test_worker_and_tools_run_over_scram_tls_and_never_show_the_secret(
        scram_broker: dict[str, str], tiny_model_dir: Path, tmp_path: Path) -> None:
    env = _env(scram_broker, tiny_model_dir)
    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    rows = [{"review_id": f"r{i}", "product_id": "p1", "ts": f"2017-03-{1 + i:02d}T10:00:00Z",
             "text": f"Review {i}: works fine.", "rating": 4} for i in range(30)]
    records = [(b"p1", json.dumps(r).encode()) for r in rows]
    records += [(b"p1", b'{"review_id": "cut'), (b"p1", b"\xff not utf-8")]
    log = tmp_path / "worker.log"
    stats = process_records(env, records, log, timeout_s=180)
    assert (stats["accepted"], stats["dead_lettered_total"]) == (30, 2)
    client = client_options(settings)
    assert client["security_protocol"] == "SASL_SSL"
    values = []
    for topic in ("review-scores", "reviews-dlq", "review-score-batches", "trends"):
        found = read_topic(scram_broker["bootstrap"], settings.topic(topic), client=client)
        values += [k or b"" for _, k, _ in found] + [v or b"" for _, _, v in found]
    assert sum(1 for v in values if b'"review_id":"r' in v) >= 30
    inline = {k: v for k, v in {**os.environ, **env}.items()
              if k != "TRENDSTREAM_SASL_PASSWORD_FILE"}
    inline["TRENDSTREAM_SASL_PASSWORD"] = scram_broker["password"]
    shown = subprocess.run([sys.executable, "-m", "stream", "settings"], capture_output=True,
                           text=True, env=inline, cwd=REPO_ROOT, timeout=60)
    secret = scram_broker["password"]
    assert "TRENDSTREAM_SASL_USERNAME=trend-app" in shown.stdout
    for text in (log.read_text(errors="replace"), shown.stdout, shown.stderr):
        assert secret not in text
    assert all(secret.encode() not in v for v in values)


def test_a_wrong_password_fails_fast_with_a_clear_message(
        scram_broker: dict[str, str], tiny_model_dir: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    env = {**os.environ, **_env(scram_broker, tiny_model_dir,
                                TRENDSTREAM_SASL_PASSWORD_FILE=str(wrong))}
    proc = subprocess.run([sys.executable, "-m", "stream", "worker"], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2
    assert "cannot reach Kafka" in proc.stderr and "Authentication" in proc.stderr, proc.stderr
    assert "not-the-password" not in proc.stderr + proc.stdout
