"""Errors raised by the export pipeline.

Exception tree::

    ExportError            root: catch this to catch everything below
    ├── DataError          a review file is unreadable or yields too few labelled reviews
    └── ParityError        an ONNX variant disagrees with PyTorch beyond its tolerance
"""

from __future__ import annotations


class ExportError(Exception):
    """Root of every error the export raises on purpose."""


class DataError(ExportError):
    """Input data cannot be used; the message names the file and line where it can."""


class ParityError(ExportError):
    """An exported graph does not reproduce the PyTorch scores."""
