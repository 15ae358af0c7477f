"""`python -m tuning.cli`: the `tunebert` command (tests and the bench run it this way)."""

import sys

from tuning.cli import main

sys.exit(main())
