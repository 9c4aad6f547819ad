#!/usr/bin/env bash
# scripts/gpu-check.sh: `trendstream gpu-check` on a GPU machine with no registry access.
#
# The device machine has python3 with torch and CUDA 13's libraries (the nvidia-* packages)
# but no onnxruntime-gpu and no registry. This script installs onnxruntime-gpu and the few
# pure dependencies gpu-check imports (no faust, no torch, no onnx) from a local folder of
# wheels into a FRESH venv: the image's own onnxruntime (CPU) shares onnxruntime-gpu's
# module folder, and stream.inference refuses the two side by side. It puts the image's
# CUDA/cuDNN libraries (site-packages/nvidia/*/lib) on LD_LIBRARY_PATH for onnxruntime-gpu,
# then runs the check under `timeout`. One JSON file comes out (stream/gpucheck.py says what
# is in it).
#
#   scripts/gpu-check.sh --list [--wheels DIR] [--model DIR]
#       every file the run needs, one per line: kind, name, bytes (- when not here), note.
#       Wheels are named as pip specs, versions from constraints/constraints.txt
#       (onnxruntime-gpu: ORT_GPU_VERSION, 1.31.1, a 256 MB wheel). Files over 60 MiB are
#       marked: carry them as parts (`split -b 60M -d FILE FILE.part-`); the run joins
#       FILE.part-00, -01, ... back into FILE in the wheel and model folders.
#   scripts/gpu-check.sh --download DIR [--python-version 3.12]
#       on a machine with PyPI: fetch exactly those wheels for CPython on manylinux x86_64.
#   scripts/gpu-check.sh --wheels DIR [--model DIR] [--out FILE] [--timeout S] [--allow-cpu]
#                        [-- GPU-CHECK ARGS...]
#       on the GPU machine: join parts, check DIR/SHA256SUMS if present, make the venv,
#       install, run `python -m stream gpu-check --model DIR --out FILE ARGS`.
#       --allow-cpu accepts a CPU onnxruntime wheel instead and runs on the CPU (tests this
#       script without a GPU; the same JSON keys, provider cpu).
#
# Environment: PYTHON (default python3: the image's, whose site-packages hold nvidia/*),
# ORT_PACKAGE (default onnxruntime-gpu), ORT_GPU_VERSION (default 1.31.1), VENV (default
# /tmp/trendstream-gpu-venv, remade each run). The onnxruntime-gpu wheel must be built for
# the machine's CUDA major version (13 on the H200 image): the script warns when the
# wheel's nvidia-* extras name another, and gpu-check fails saying the CUDA provider did
# not load.
#
# The model directory is gitignored, so it does not travel with the working tree: carry
# manifest.json, tokenizer.json, model.onnx and model.fp16.onnx (model.int8.onnx is not
# read; add the fp16 variant first with `trendstream export-fp16 --model DIR`).
set -euo pipefail
shopt -s nocaseglob

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
ORT_PACKAGE="${ORT_PACKAGE:-onnxruntime-gpu}"
ORT_GPU_VERSION="${ORT_GPU_VERSION:-1.31.1}"  # PyPI's newest; it has no 1.32.0 (the cpu pin)
VENV="${VENV:-/tmp/trendstream-gpu-venv}"
PART_BYTES=$((60 * 1024 * 1024))
# What `python -m stream gpu-check` imports: stream.inference (onnxruntime, numpy,
# tokenizers), stream.artifact (pydantic), stream.settings (pydantic-settings), and
# stream.bench -> stream.replay, whose module imports aiokafka.
DEPS=(numpy tokenizers pydantic pydantic-core annotated-types typing-extensions
      typing-inspection pydantic-settings python-dotenv aiokafka async-timeout packaging)
BINARY=(onnxruntime-gpu onnxruntime numpy tokenizers pydantic-core aiokafka)
MODEL_FILES=(manifest.json tokenizer.json model.onnx model.fp16.onnx)

die() { echo "gpu-check.sh: $*" >&2; exit 2; }

pin() {  # pin NAME: its version in constraints/constraints.txt
  local version
  version="$(awk -F'==' -v n="$1" 'BEGIN { n = tolower(n); gsub(/[-_.]+/, "-", n) }
    { k = tolower($1); gsub(/[-_.]+/, "-", k); if (k == n) print $2 }' \
    "$ROOT/constraints/constraints.txt")"
  [[ -n "$version" ]] || die "$1 is not pinned in constraints/constraints.txt"
  echo "$version"
}

specs() {  # every wheel, as NAME==VERSION
  if [[ "$ORT_PACKAGE" == onnxruntime-gpu ]]; then
    echo "onnxruntime-gpu==$ORT_GPU_VERSION"
  else
    echo "$ORT_PACKAGE==$(pin "$ORT_PACKAGE")"
  fi
  local name
  for name in "${DEPS[@]}"; do echo "$name==$(pin "$name")"; done
}

wheel_file() {  # wheel_file DIR NAME: the wheel of NAME in DIR (pip's normalised file name)
  local norm="${2,,}"
  norm="${norm//[-.]/_}"
  compgen -G "$1/${norm}-[0-9]*.whl" | head -n 1 || true
}

size_note() {  # size_note FILE: "BYTES<TAB>NOTE"
  local bytes
  bytes="$(stat -c %s "$1")"
  if ((bytes > PART_BYTES)); then
    printf '%s\tover 60 MiB: split -b 60M -d %s %s.part-\n' "$bytes" "$(basename "$1")" \
      "$(basename "$1")"
  else
    printf '%s\t\n' "$bytes"
  fi
}

wheel_note() {  # wheel_note NAME: which wheel of NAME the device machine needs
  case " ${BINARY[*]} " in
    *" $1 "*) echo "CPython 3.12, manylinux x86_64$([[ "$1" == onnxruntime-gpu ]] &&
                echo ', built for CUDA 13' || true)" ;;
    *) echo "pure Python (py3-none-any)" ;;
  esac
}

list() {  # list WHEEL_DIR MODEL_DIR
  local spec file name
  while read -r spec; do
    name="${spec%%==*}"
    file="$([[ -n "$1" ]] && wheel_file "$1" "$name" || true)"
    if [[ -n "$file" ]]; then
      printf 'wheel\t%s\t%s\n' "$(basename "$file")" "$(size_note "$file")"
    else
      printf 'wheel\t%s\t-\t%s\n' "$spec" "$(wheel_note "$name")"
    fi
  done < <(specs)
  for name in "${MODEL_FILES[@]}"; do
    if [[ -f "$2/$name" ]]; then
      printf 'model\t%s\t%s\n' "$2/$name" "$(size_note "$2/$name")"
    else
      printf 'model\t%s\t-\tmissing here\n' "$2/$name"
    fi
  done
  printf 'repo\t%s\t-\ttracked: travels with the working tree\n' \
    scripts/gpu-check.sh stream/ data/datafiniti-amazon-devices/reviews.jsonl.gz \
    constraints/constraints.txt
}

download() {  # download DIR PYTHON_VERSION
  mkdir -p "$1"
  local platforms=() n
  for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  # shellcheck disable=SC2046  # one spec per word
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --implementation cp \
    --python-version "$2" "${platforms[@]}" --platform manylinux2014_x86_64 -d "$1" $(specs)
}

join_parts() {  # join_parts DIR: FILE.part-00, -01, ... -> FILE (when FILE is absent)
  local part base
  for part in "$1"/*.part-00; do
    [[ -e "$part" ]] || continue
    base="${part%.part-00}"
    [[ -e "$base" ]] && continue
    cat "$base".part-* >"$base.joining" && mv "$base.joining" "$base"
    echo "joined $(basename "$base") from $(compgen -G "$base.part-*" | wc -l) parts"
  done
}

cuda_libs() {  # the image's nvidia/*/lib folders, joined with ':'
  "$PYTHON" - <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
libs = sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})
print(":".join(libs))
EOF
}

warn_cuda_major() {  # warn_cuda_major WHEEL: say so when its nvidia-* extras are not CUDA 13
  "$PYTHON" - "$1" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    majors = set(re.findall(r"^Requires-Dist: nvidia-[a-z-]+-cu(\d+)",
                            whl.read(meta).decode(), re.M))
if majors and majors != {"13"}:
    print(f"gpu-check.sh: warning: {sys.argv[1]} names CUDA {sorted(majors)} packages; this "
          "machine's libraries are CUDA 13, so its CUDA provider may not load", file=sys.stderr)
EOF
}

install() {  # install WHEEL_DIR ALLOW_CPU
  local missing=() spec name file wheels=()
  while read -r spec; do
    name="${spec%%==*}"
    if [[ "$name" == "$ORT_PACKAGE" && "$2" == 1 ]]; then
      file="$(wheel_file "$1" "$ORT_PACKAGE")"
      [[ -n "$file" ]] || file="$(wheel_file "$1" onnxruntime)"
    else
      file="$(wheel_file "$1" "$name")"
    fi
    if [[ -n "$file" ]]; then wheels+=("$file"); else missing+=("$spec"); fi
  done < <(specs)
  ((${#missing[@]} == 0)) || die "no wheel in $1 for: ${missing[*]} (see --list)"
  [[ "$2" == 1 ]] || warn_cuda_major "${wheels[0]}"
  rm -rf "$VENV"
  "$PYTHON" -m venv --without-pip "$VENV"  # no system site-packages: not the image's onnxruntime
  local site_dir
  site_dir="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site_dir" "${wheels[@]}"
}

main() {
  local mode="" wheels="" model="$ROOT/models/default" out="$ROOT/out/gpu/gpu-check.json"
  local timeout_s=480 allow_cpu=0 pyver=3.12 download_dir="" extra=()
  while (($#)); do
    case "$1" in
      --list) mode=list ;;
      --download) mode=download; download_dir="$2"; shift ;;
      --python-version) pyver="$2"; shift ;;
      --wheels) wheels="$2"; shift ;;
      --model) model="$2"; shift ;;
      --out) out="$2"; shift ;;
      --timeout) timeout_s="$2"; shift ;;
      --allow-cpu) allow_cpu=1 ;;
      --) shift; extra=("$@"); break ;;
      -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  case "$mode" in
    list) list "$wheels" "$model"; return ;;
    download) download "$download_dir" "$pyver"; return ;;
  esac
  [[ -n "$wheels" ]] || die "--wheels DIR is required (or --list / --download; see --help)"
  join_parts "$wheels"
  join_parts "$model"
  if [[ -f "$wheels/SHA256SUMS" ]]; then (cd "$wheels" && sha256sum --quiet -c SHA256SUMS); fi
  install "$wheels" "$allow_cpu"
  local libs
  libs="$(cuda_libs)"
  [[ -n "$libs" || "$allow_cpu" == 1 ]] || die "no site-packages/nvidia/*/lib under $PYTHON"
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local args=(--model "$model" --out "$out")
  [[ "$allow_cpu" == 1 ]] && args+=(--allow-cpu)
  cd "$ROOT"
  local rc=0
  PYTHONPATH="$ROOT" PYTHONUNBUFFERED=1 timeout "$timeout_s" \
    "$VENV/bin/python" -m stream gpu-check "${args[@]}" "${extra[@]}" || rc=$?
  ((rc != 124)) || echo "gpu-check.sh: gpu-check ran past --timeout ${timeout_s}s" >&2
  return "$rc"
}

main "$@"
