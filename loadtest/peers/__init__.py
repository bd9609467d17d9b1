"""The peer benchmark: lightnode against gunicorn, uvicorn and granian on the same functions.

`python -m loadtest.peers` (see `loadtest.peers.cli`). Serves `add` and `spin`
of `loadtest/services/bench` from every server, drives them with the harness
(`python -m loadtest run`), cross-checks lightnode's `add` and `spin` at the top
concurrency with wrk, and writes every run plus a table of medians with ratios to
lightnode. Must not import `lightnode`.
"""

from __future__ import annotations
