"""Helpers for tests against the real broker: a worker process, topic readers, polling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class Worker:
    """A real `trendstream worker` process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["TRENDSTREAM_WEB_PORT"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "stream", "worker"],
                                     env={**os.environ, **env}, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def get(self, path: str) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker died ({self.proc.returncode}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except OSError:
            return None

    def wait_ready(self, timeout_s: float = 120) -> None:
        wait_for(lambda: (self.get("/readyz") or {}).get("ready"), timeout_s=timeout_s,
                 what="worker readiness")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def read_topic(bootstrap: str, topic: str, *, partitions: int = 6,
               timeout_s: float = 10) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of a topic, read_committed, as (partition, key, value)."""
    async def run() -> list[tuple[int, bytes | None, bytes | None]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out: list[tuple[int, bytes | None, bytes | None]] = []
            deadline = time.monotonic() + timeout_s
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end")
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    out += [(tp.partition, r.key, r.value) for r in records]
            return out
        finally:
            await consumer.stop()
    return asyncio.run(run())
