"""Wait until a Kafka cluster really answers: a metadata (describe-cluster) request
succeeds and lists at least one broker. With --pid, that process must also be the
one listening on the bootstrap port (another broker may hold it, e.g. one started
earlier on the same data dir).

Exit 0 when ready; 1 on timeout; 2 when the watched broker process (--pid) died.
"""

import argparse
import asyncio
import logging
import os
import sys
import time

from aiokafka.admin import AIOKafkaAdminClient


def process_alive(pid: int) -> bool:
    # A zombie still answers kill -0 but has an empty cmdline.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return bool(f.read())
    except OSError:
        return False


def owns_listener(pid: int, port: int) -> bool:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in list(f)[1:]:
                fields = row.split()
                # fields: sl local remote state ... inode; state 0A is LISTEN.
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            pass
    return False


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})\n"


async def describe(bootstrap: str, timeout: float) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


async def wait_ready(args) -> int:
    deadline = time.monotonic() + args.timeout
    port = int(args.bootstrap.split(",")[0].rsplit(":", 1)[1])
    last_error = "no attempt made"
    while True:
        if args.pid and not process_alive(args.pid):
            print(f"kafka process {args.pid} exited during startup", file=sys.stderr)
            for log in args.log:
                print(f"--- tail of {log} ---\n{log_tail(log)}", end="", file=sys.stderr)
            return 2
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"kafka at {args.bootstrap} not ready after {args.timeout:.0f}s: {last_error}",
                file=sys.stderr,
            )
            return 1
        if args.pid and not owns_listener(args.pid, port):
            last_error = f"process {args.pid} is not listening on port {port}"
        else:
            try:
                attempt = min(left, 5.0)
                info = await asyncio.wait_for(describe(args.bootstrap, attempt), attempt)
                if info.get("brokers"):
                    return 0
                last_error = "metadata lists no brokers yet"
            except Exception as e:  # any failure just means "not yet"
                last_error = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.25)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("bootstrap", help="host:port[,host:port...]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--pid", type=int, help="broker process to watch while waiting")
    p.add_argument("--log", action="append", default=[], help="log to show if it dies")
    args = p.parse_args()
    # aiokafka logs every refused connection; only our own summary matters here.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    logging.getLogger("aiokafka").propagate = False
    return asyncio.run(wait_ready(args))


if __name__ == "__main__":
    sys.exit(main())
