"""`python -m tunelab.cli …`: the `tunelab` command without its console script (torchrun starts it this way)."""

from __future__ import annotations

import sys

from tunelab.cli import main

sys.exit(main())
