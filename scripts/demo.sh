#!/usr/bin/env bash
# make demo: use the configured cluster, or start the local broker and stop it afterwards
# (only if this script started it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
bootstrap=${TRENDSTREAM_KAFKA_BOOTSTRAP:-}
started=""
cleanup() {
  if [[ -n "$started" ]]; then bash deploy/kafka/kafka.sh down >/dev/null || true; fi
}
trap cleanup EXIT
if [[ -z "$bootstrap" ]]; then
  if bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
    echo "using the local broker that is already running (make kafka-down stops it)"
  else
    PYTHON=$PYTHON bash deploy/kafka/kafka.sh up >/dev/null
    started=yes
  fi
  bootstrap=$(cat .kafka/run/bootstrap)
fi
# The bootstrap goes to the demo only: kafka.sh reads the same variable as "an external
# cluster, start and stop nothing", which must not apply to the broker started here.
TRENDSTREAM_KAFKA_BOOTSTRAP=$bootstrap HF_HUB_OFFLINE=1 "$PYTHON" -m stream demo "$@"
