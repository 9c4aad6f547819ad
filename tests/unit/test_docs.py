"""The README's settings table is the one the code generates."""

from __future__ import annotations

from stream.settings import REPO_ROOT, Settings
from stream.settingsdoc import describe


def test_readme_settings_table_matches_the_code() -> None:
    """Every setting appears in the README exactly as `trendstream settings --markdown` prints."""
    table = describe(Settings(), markdown=True)
    assert table in (REPO_ROOT / "README.md").read_text()
    assert table.count("\n| `TRENDSTREAM_") == len(Settings.model_fields)
