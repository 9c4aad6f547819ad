"""Render the settings as text or as the README's Markdown table."""

from __future__ import annotations

from stream.settings import REPO_ROOT, Settings


def _default(value: object) -> str:
    text = str(value)
    return text.replace(str(REPO_ROOT) + "/", "") if value is not None else "—"


def describe(settings: Settings, *, markdown: bool) -> str:
    """One line per setting: env variable, default, description (and current value)."""
    fields = type(settings).model_fields
    if markdown:
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        rows += [f"| `TRENDSTREAM_{name.upper()}` | `{_default(f.default)}` | {f.description} |"
                 for name, f in fields.items()]
        return "\n".join(rows)
    return "\n".join(f"TRENDSTREAM_{name.upper()}={_value(settings, name)}" for name in fields)


def _value(settings: Settings, name: str) -> str:
    if "password" in name:
        return "***"
    if name == "webhooks":  # a hook's URL can hold a token: name, format and host only
        return "[" + ", ".join(h.describe() for h in settings.webhooks) + "]"
    return str(getattr(settings, name))
