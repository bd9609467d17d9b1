"""lightnode-loadtest: the load-test harness for lightnode (SPEC §13).

A top-level package of its own: it drives any HTTP target, so it must not
import `lightnode` (a peer server can be measured with the same tool).
"""

from __future__ import annotations

__version__ = "0.1.0"
