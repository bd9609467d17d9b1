"""`python -m lightnode` runs the command line."""

import sys

from lightnode.cli import main

sys.exit(main())
