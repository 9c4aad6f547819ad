"""Read review files in the shared format (.jsonl or .jsonl.gz, one review per line)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield (line number, parsed object or None when the line is not a JSON object, line)."""
    with _open(Path(path)) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            yield lineno, obj if isinstance(obj, dict) else None, line.rstrip("\n")


def read_products(review_file: Path) -> dict[str, str]:
    """product_id -> display name, from a products.json next to the review file, if any."""
    path = Path(review_file).parent / "products.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    names = {}
    for pid, info in raw.items():
        candidates = info.get("names") or [] if isinstance(info, dict) else []
        names[pid] = min(candidates, key=len) if candidates else pid
    return names
