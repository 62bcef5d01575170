"""``python -m mergesearch``: the same entry point as the ``mergesearch`` command."""

import sys

from mergesearch.search.cli import main

sys.exit(main())
