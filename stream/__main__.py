"""``python -m stream`` = the ``trendstream`` command."""

from stream.cli import main

raise SystemExit(main())
