"""`python -m loadtest.peers` runs the peer benchmark (`loadtest.peers.cli`)."""

from __future__ import annotations

import sys

from loadtest.peers.cli import main

if __name__ == "__main__":
    sys.exit(main())
