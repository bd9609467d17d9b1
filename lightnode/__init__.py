"""lightnode: an API node that serves Python functions over HTTP."""

from pathlib import Path

from lightnode import hotbuild

__version__ = "0.1.0"

# Before any other lightnode module: a compiled build that no longer matches its
# sources must not shadow them (see hotbuild).
hotbuild.guard(Path(__file__).parent)
