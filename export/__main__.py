"""``python -m export``: the same as ``trendstream export``."""

import sys

from export.cli import main

sys.exit(main(sys.argv[1:]))
