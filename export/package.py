"""Assemble the model directory in a staging dir and publish it via ``stream.artifact``."""

from __future__ import annotations

import platform
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from tokenizers import Tokenizer

from stream.artifact import Manifest, publish_model_dir, sha256_file
from stream.settings import REPO_ROOT
from stream.trends import DetectorParams

MODEL_FILE: Final = "model.onnx"
INT8_FILE: Final = "model.int8.onnx"
FP16_FILE: Final = "model.fp16.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
_VERSIONED: Final = ("torch", "transformers", "optimum", "optimum-onnx", "onnx",
                     "onnxconverter-common", "onnxruntime", "tokenizers", "numpy")


def staging_dir(target: Path) -> Path:
    """A fresh directory beside ``target`` (same file system, so publishing is a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the worker may run as another user
    return staging


def write_tokenizer(source: Path, dest: Path) -> None:
    """Save the tokenizer without its baked-in fixed padding and truncation (the worker's view).

    The base model's tokenizer.json pads every text to 128 tokens; the worker turns that off
    (``stream.inference.load_tokenizer``) and truncates itself, and so should anyone else.
    """
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(dest))


def model_id(onnx_path: Path, *, prefix: str) -> str:
    """``prefix`` + the first 12 hex digits of the fp32 graph's sha256."""
    return f"{prefix}{sha256_file(onnx_path)[:12]}"


def versions() -> dict[str, str]:
    """Versions of python, the export libraries and trendstream."""
    found = {name: metadata.version(name) for name in _VERSIONED}
    return {"python": platform.python_version(), **found, "trendstream": _trendstream_version()}


def _trendstream_version() -> str:
    try:
        return metadata.version("trendstream")
    except metadata.PackageNotFoundError:  # a source checkout that is not pip-installed
        import tomllib

        with (REPO_ROOT / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])


def publish(staging: Path, target: Path, manifest: dict[str, Any]) -> Manifest:
    """Add creation time, versions (and detector defaults if none); write manifest last; rename."""
    full = {"detector": DetectorParams(), **manifest,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "versions": versions()}
    return publish_model_dir(staging, target, full)
