"""lightnode: an API node that serves Python functions over HTTP."""

__version__ = "0.1.0"
