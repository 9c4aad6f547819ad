"""Helpers for tests against the real broker: settings, worker processes, topic readers."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stream.benchkafka import read_all
from stream.settings import REPO_ROOT
from stream.workerproc import WorkerProcess, free_port


def unique_env(bootstrap: str, model_dir: Path, **extra: str) -> dict[str, str]:
    """Settings for one test: its own topics, consumer group and web port."""
    run = uuid.uuid4().hex[:10]
    return {"TRENDSTREAM_KAFKA_BOOTSTRAP": bootstrap, "TRENDSTREAM_APP_ID": f"ts-test-{run}",
            "TRENDSTREAM_TOPIC_PREFIX": f"t{run}.", "TRENDSTREAM_MODEL_DIR": str(model_dir),
            "TRENDSTREAM_WEB_PORT": str(free_port()), "TRENDSTREAM_LOG_LEVEL": "INFO",
            "TRENDSTREAM_ORT_INTRA_OP_THREADS": "1", **extra}


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns a truthy value, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def start_worker(env: dict[str, str], log_path: Path) -> WorkerProcess:
    """A real worker process with the test's settings on top of this environment."""
    return WorkerProcess({**os.environ, **env}, log_path)


def read_topic(bootstrap: str, topic: str, *, partitions: int = 6, timeout_s: float = 10,
               client: dict[str, Any] | None = None,
               ) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of a topic, read_committed, as (partition, key, value)."""
    records = asyncio.run(read_all(bootstrap, topic, partitions=partitions,
                                   timeout_s=timeout_s, client=client))
    return [(r.partition, r.key, r.value) for r in records]


def process_records(env: dict[str, str], records: list[tuple[bytes | None, bytes | None]],
                    log_path: Path, *, timeout_s: float = 180,
                    inspect: Callable[[WorkerProcess], None] | None = None) -> dict[str, Any]:
    """Start a worker, produce the records, wait until each is accepted, skipped or
    dead-lettered, check it is still ready, call ``inspect`` with it, stop it (exit 0);
    return its /stats."""
    from stream.replay import produce
    from stream.settings import Settings
    from stream.topics import ensure_topics

    settings = Settings(**{k.removeprefix("TRENDSTREAM_").lower(): v for k, v in env.items()})
    asyncio.run(ensure_topics(settings))
    worker = start_worker(env, log_path)
    try:
        worker.wait_ready()
        asyncio.run(produce(settings, records, topic=settings.topic("reviews")))
        stats = wait_for(lambda: (s := worker.get("/stats")) and s["accepted"] +
                         s["dead_lettered_total"] + s["duplicates_skipped"] >= len(records)
                         and s, timeout_s=timeout_s, what="all records processed")
        assert (worker.get("/readyz") or {}).get("ready"), "worker not ready after the records"
        if inspect is not None:
            inspect(worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    return stats


KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"


@contextmanager
def secure_broker(base: Path, user: str, *,
                  broker_properties: str | None = None) -> Iterator[dict[str, str]]:
    """A local broker with a SASL_SSL listener (certificates made here by trustme) and the
    SCRAM ``user``; ``broker_properties``: extra server settings (e.g. an authorizer).
    Yields the plain and secure bootstraps, the password, its file and the CA file."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    certs = base / "certs"
    certs.mkdir(parents=True)
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    (certs / "server.pem").write_bytes(pkcs8 + b"".join(p.bytes() for p in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    password = secrets.token_urlsafe(18)
    (certs / "scram.users").write_text(f"{user} {password}\n")
    if broker_properties is not None:
        (certs / "broker.properties").write_text(broker_properties)
    (base / "password").write_text(password + "\n")
    run = ["bash", str(KAFKA_SH), "up", "--data-dir", str(base / "data"), "--run-dir",
           str(base / "run"), "--secure", str(certs)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        yield {"plain": proc.stdout.strip().splitlines()[-1],
               "secure": (base / "run" / "secure_bootstrap").read_text().strip(),
               "password": password, "password_file": str(base / "password"),
               "cafile": str(certs / "ca.pem")}
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "down", "--run-dir", str(base / "run")],
                       capture_output=True, timeout=120)
