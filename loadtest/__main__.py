"""`python -m loadtest` runs the harness command line (`loadtest.cli`).

The guard matters: generator processes are started with the "spawn" method,
which imports the parent's main module again in each child.
"""

from __future__ import annotations

import sys

from loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
