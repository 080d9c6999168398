"""``python -m medmark …``: the same entry point as the ``medmark`` console script."""

import sys

from medmark.cli import main

sys.exit(main())
