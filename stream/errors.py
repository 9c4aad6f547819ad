"""Errors raised by the TrendStream runtime.

Exception tree::

    StreamError                    root: catch this to catch everything below
    ├── SettingsError              a setting is missing or out of range (process-level)
    ├── RuntimeMissingError        neither onnxruntime extra is installed (process-level)
    ├── ArtifactError              the model directory is missing, corrupt or unknown
    ├── EventError                 one bad input record; carries a DLQ `reason`
    │                              (per-event: dead-lettered, processing continues)
    └── WebhookVerificationError   a webhook request fails `stream.webhooks.verify`
                                   (raised in the consumer's receiver, never in the worker)

Process-level errors crash fast with a message that says what to do; the orchestrator
restarts the worker. Per-event errors never escape an agent: they become DeadLetter records.
"""

from __future__ import annotations


class StreamError(Exception):
    """Root of every error the runtime raises on purpose."""


class SettingsError(StreamError):
    """A setting is missing, malformed or out of range."""


class RuntimeMissingError(StreamError):
    """No ONNX Runtime package is importable."""


class ArtifactError(StreamError):
    """The model directory cannot be used (missing file, checksum, version)."""


class EventError(StreamError):
    """One input record is unusable; `reason` is the stable DLQ reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WebhookVerificationError(StreamError):
    """A received webhook is not authentic or not fresh: reject it (HTTP 400/401)."""
