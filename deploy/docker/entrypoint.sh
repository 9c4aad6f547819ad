#!/bin/sh
# Entrypoint of the TrendStream images (deploy/docker/Dockerfile.cpu, Dockerfile.gpu).
#
# Checks the one thing a container adds to the worker's own start-up checks: that a model
# directory is mounted (or baked) where TRENDSTREAM_MODEL_DIR points, and readable by the
# container's user. Missing or unreadable: one line saying what to do, exit 2 (the worker's
# exit code for a configuration error). Then it replaces itself with the worker (exec), so
# the worker is the container's main process and gets SIGTERM itself: it drains, commits
# and exits 0. Arguments go to `trendstream worker` (e.g. --naive-scoring); for the other
# commands use `docker run --entrypoint trendstream IMAGE dlq summary`.
set -eu

model_dir="${TRENDSTREAM_MODEL_DIR:-/models/default}"
manifest="$model_dir/manifest.json"

fail() {
    echo "trendstream-entrypoint: $*" >&2
    exit 2
}

if [ ! -d "$model_dir" ]; then
    fail "no model directory at $model_dir: mount an exported model there" \
         "(docker run -v \"\$PWD/models/default:$model_dir:ro\" ...), build the baked image" \
         "(--target baked --build-context model=DIR), or set TRENDSTREAM_MODEL_DIR"
fi
if [ ! -e "$manifest" ]; then
    fail "$model_dir holds no manifest.json: mount the model directory itself" \
         "(e.g. models/default, the folder with manifest.json, tokenizer.json and model*.onnx)," \
         "not its parent; a directory without a manifest is an unfinished export"
fi
if [ ! -r "$manifest" ]; then
    fail "$manifest is not readable by uid $(id -u): make the model world-readable" \
         "(chmod -R a+rX DIR) or run the container with a --user that can read it"
fi

exec trendstream worker "$@"
