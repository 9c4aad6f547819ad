"""Real single-node Kafka broker for tests, driven by deploy/kafka/kafka.sh.

    bootstrap, stop = start_broker(tmp_dir)   # tmp_dir/data + tmp_dir/run
    bootstrap = restart_broker(tmp_dir)        # same data dir -> same bootstrap
    stop()

With TRENDSTREAM_KAFKA_BOOTSTRAP set, that cluster is used and nothing is started or stopped.
"""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

KAFKA_SH = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "kafka.sh"
EXTERNAL_ENV = "TRENDSTREAM_KAFKA_BOOTSTRAP"


def _kafka_sh(cmd: str, tmp_dir, timeout: float) -> str:
    tmp = Path(tmp_dir)
    args = ["bash", str(KAFKA_SH), cmd, "--run-dir", str(tmp / "run")]
    if cmd == "up":
        args += ["--data-dir", str(tmp / "data")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"kafka.sh {cmd} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
        )
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def start_broker(tmp_dir, timeout: float = 300) -> tuple[str, Callable[[], None]]:
    """Start a broker with its data and run dirs under tmp_dir; return (bootstrap, stop).

    The timeout covers a first run that still has to download the jars.
    """
    bootstrap = _kafka_sh("up", tmp_dir, timeout)  # external cluster: only checks it answers
    if os.environ.get(EXTERNAL_ENV):
        return bootstrap, lambda: None
    return bootstrap, lambda: stop_broker(tmp_dir)


def stop_broker(tmp_dir, timeout: float = 60) -> None:
    if not os.environ.get(EXTERNAL_ENV):
        _kafka_sh("down", tmp_dir, timeout)


def restart_broker(tmp_dir, timeout: float = 120) -> str:
    """Stop and start the broker of tmp_dir; it comes back on the same bootstrap."""
    if os.environ.get(EXTERNAL_ENV):
        raise RuntimeError(f"cannot restart the external cluster in ${EXTERNAL_ENV}")
    stop_broker(tmp_dir)
    return _kafka_sh("up", tmp_dir, timeout)
