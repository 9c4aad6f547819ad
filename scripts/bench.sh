#!/usr/bin/env bash
# make bench: use the configured cluster, or start the local broker (and stop it after,
# if this script started it). The broker's pid goes to the bench for its CPU seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
bootstrap=${TRENDSTREAM_KAFKA_BOOTSTRAP:-}
started=""
pid_args=()
cleanup() {
  if [[ -n "$started" ]]; then bash deploy/kafka/kafka.sh down >/dev/null || true; fi
}
trap cleanup EXIT
if [[ -z "$bootstrap" ]]; then
  if ! bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
    PYTHON=$PYTHON bash deploy/kafka/kafka.sh up >/dev/null
    started=yes
  fi
  bootstrap=$(cat .kafka/run/bootstrap)
  pid_args=(--broker-pid-file .kafka/run/kafka.pid)
fi
TRENDSTREAM_KAFKA_BOOTSTRAP=$bootstrap HF_HUB_OFFLINE=1 "$PYTHON" -m stream bench \
  "${pid_args[@]}" "$@"
