"""`python -m engine.cli`: the `motif` command."""

import sys

from engine.cli import main

sys.exit(main())
