"""Run `trendstream worker` as a child process and talk to its web pages (demo, tests)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stream.errors import StreamError
from stream.settings import REPO_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """A worker child process; ``env`` holds its TRENDSTREAM_* settings (web port included)."""

    def __init__(self, env: dict[str, str], log_path: Path, *,
                 args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{env['TRENDSTREAM_WEB_PORT']}"
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "stream", "worker", *args], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str) -> dict[str, Any] | None:
        """GET a JSON page (a 503 body too); None while the server does not answer."""
        if self.proc.poll() is not None:
            msg = f"worker exited with {self.proc.returncode}; log {self.log_path}:\n" \
                  f"{self.log_tail()}"
            raise StreamError(msg)
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read())
            except ValueError:  # not one of our JSON pages (e.g. a 500 from the server)
                return None
        except (OSError, ValueError):
            return None

    def get_text(self, path: str) -> str:
        """GET a text page (e.g. /metrics)."""
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Poll /readyz until ready; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if (self.get("/readyz") or {}).get("ready"):
                return time.monotonic() - started
            time.sleep(0.25)
        raise StreamError(f"worker not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (the worker drains and commits), SIGKILL after the timeout; exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
