"""`python -m loadtest.peers.tally FILE...`: several peer runs read together.

    python -m loadtest.peers.tally loadtest/results/2026-11-28/*.json [--out FILE.md]

On a machine whose speed drifts, one run of a few rounds can call a tie a loss (or
the reverse). This pools the rounds of several `peers.json` files: per function,
concurrency and peer, the rounds lightnode won (the peer's throughput below
lightnode's in the same round of the same run), the median of those per-round
ratios and their range, and how many runs took part. Rounds pair only within a run
(`table.round_ratios`), never across runs. A file that is not a peer run is refused
by name (exit 2). Prints the table (Markdown); `--out` also writes it. Must not
import `lightnode`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.peers.table import REFERENCE, rounds_won, summarize

EXIT_OK, EXIT_USAGE = 0, 2


def pool_rounds(runs_per_file: Iterable[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (function, concurrency, peer), in first-seen order.

    Each row has `ratios` (peer ÷ lightnode, one per paired round, over all the
    files), `won` (how many of them are below 1.0), `runs` (files in which the
    peer had at least one paired round) and `median`, `low`, `high` of the ratios.
    """
    pooled: dict[tuple[str, int, str], dict[str, Any]] = {}
    for runs in runs_per_file:
        for row in summarize(runs):
            if row["server"] == REFERENCE or not row["round_ratios"]:
                continue
            key = (row["function"], row["concurrency"], row["server"])
            entry = pooled.setdefault(
                key,
                {
                    "function": key[0],
                    "concurrency": key[1],
                    "server": key[2],
                    "ratios": [],
                    "runs": 0,
                },
            )
            entry["ratios"].extend(row["round_ratios"])
            entry["runs"] += 1
    rows = []
    for entry in pooled.values():
        ratios = entry["ratios"]
        rows.append(
            {
                **entry,
                "won": rounds_won(ratios),
                "median": statistics.median(ratios),
                "low": min(ratios),
                "high": max(ratios),
            }
        )
    return rows


def sources_line(paths: Sequence[Path]) -> str:
    """Where the rounds came from; one folder is named once."""
    folders = {path.parent for path in paths}
    if len(folders) == 1:
        return f"From (in {folders.pop()}/): " + ", ".join(path.name for path in paths) + "."
    return "From: " + ", ".join(str(path) for path in paths) + "."


def render(rows: Sequence[Mapping[str, Any]], sources: str) -> str:
    lines = [
        "| case | peer | rounds lightnode won | peer ÷ lightnode, median per round (range) | runs |",
        "|---|---|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["function"], r["concurrency"])):
        lines.append(
            f"| {row['function']} c={row['concurrency']} | {row['server']} "
            f"| {row['won']} of {len(row['ratios'])} "
            f"| {row['median']:.2f}× ({row['low']:.2f}–{row['high']:.2f}) | {row['runs']} |"
        )
    lines += ["", sources]
    return "\n".join(lines) + "\n"


def load_runs(path: Path) -> list[Mapping[str, Any]]:
    """The per-run records of one `peers.json`; ValueError if it is not one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({exc})") from None
    runs = document.get("runs") if isinstance(document, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError(f"{path}: not a peers.json (no list of runs)")
    for run in runs:
        if not {"function", "concurrency", "server"} <= run.keys():
            raise ValueError(f"{path}: a run lacks function, concurrency or server")
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.tally",
        description="Pool the rounds of several peer runs: the rounds lightnode won per case and peer.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="peers.json files")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        runs_per_file = [load_runs(path) for path in args.files]
    except ValueError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = pool_rounds(runs_per_file)
    if not rows:
        print("tally: no round pairs lightnode with a peer in these files", file=sys.stderr)
        return EXIT_USAGE
    text = render(rows, sources_line(args.files))
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
