#!/usr/bin/env bash
# make demo: use the configured cluster, or start the local broker and stop it afterwards
# (only if this script started it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
started=""
if [[ -z "${TRENDSTREAM_KAFKA_BOOTSTRAP:-}" ]]; then
  if bash deploy/kafka/kafka.sh status >/dev/null 2>&1; then
    echo "using the local broker that is already running"
  else
    PYTHON=$PYTHON bash deploy/kafka/kafka.sh up >/dev/null
    started=yes
  fi
  TRENDSTREAM_KAFKA_BOOTSTRAP=$(cat .kafka/run/bootstrap)
  export TRENDSTREAM_KAFKA_BOOTSTRAP
fi
cleanup() { [[ -n "$started" ]] && bash deploy/kafka/kafka.sh down >/dev/null || true; }
trap cleanup EXIT
HF_HUB_OFFLINE=1 "$PYTHON" -m stream demo "$@"
