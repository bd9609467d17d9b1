"""`python -m loadtest.peers.tally`: the rounds of several peer runs pooled (pure, and its CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.peers import tally


def _run(
    server: str, rps: float, round_: int, function: str = "spin", c: int = 8
) -> dict[str, Any]:
    return {"server": server, "function": function, "concurrency": c, "round": round_,
            "throughput_rps": rps, "latency_ms": {"p50": 1.0, "p99": 2.0}}  # fmt: skip


# Two runs of the same case: lightnode wins round 1 of the first (peer 90 against 100) and
# loses round 2 (120 against 100); in the second it loses both rounds (110/100, 150/100).
RUN_A = [
    _run("lightnode", 100, 1),
    _run("peer", 90, 1),
    _run("lightnode", 100, 2),
    _run("peer", 120, 2),
]
RUN_B = [
    _run("lightnode", 100, 1),
    _run("peer", 110, 1),
    _run("lightnode", 100, 2),
    _run("peer", 150, 2),
]


def test_rounds_pool_across_runs_and_pair_only_within_one() -> None:
    (row,) = tally.pool_rounds([RUN_A, RUN_B])
    assert (row["function"], row["concurrency"], row["server"]) == ("spin", 8, "peer")
    assert row["ratios"] == pytest.approx([0.9, 1.2, 1.1, 1.5])
    assert (row["won"], row["runs"]) == (1, 2)
    assert row["median"] == pytest.approx(1.15)
    assert (row["low"], row["high"]) == pytest.approx((0.9, 1.5))


def test_a_peer_round_without_lightnode_in_the_same_run_is_not_paired() -> None:
    # round 3 of the peer has no lightnode round beside it; lightnode's round 3 of
    # another run must not stand in for it
    lone = [_run("lightnode", 100, 1), _run("peer", 50, 1), _run("peer", 10, 3)]
    other = [_run("lightnode", 1000, 3), _run("peer", 2000, 3)]
    (row,) = tally.pool_rounds([lone, other])
    assert row["ratios"] == pytest.approx([0.5, 2.0])
    assert row["won"] == 1


def test_cases_and_peers_stay_apart_and_lightnode_gets_no_row() -> None:
    add = [_run("lightnode", 100, 1, "add", 64), _run("peer", 80, 1, "add", 64),
           _run("other", 130, 1, "add", 64)]  # fmt: skip
    rows = tally.pool_rounds([RUN_A, add])
    keys = {(r["function"], r["concurrency"], r["server"]): r["won"] for r in rows}
    assert keys == {("spin", 8, "peer"): 1, ("add", 64, "peer"): 1, ("add", 64, "other"): 0}


def test_the_table_says_rounds_won_ratio_range_and_runs() -> None:
    sources = tally.sources_line([Path("r/a.json"), Path("r/b.json")])
    assert sources == "From (in r/): a.json, b.json."
    assert tally.sources_line([Path("r/a.json"), Path("s/b.json")]) == "From: r/a.json, s/b.json."
    text = tally.render(tally.pool_rounds([RUN_A, RUN_B]), sources)
    line = next(line for line in text.splitlines() if line.startswith("| spin c=8"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells == ["spin c=8", "peer", "1 of 4", "1.15× (0.90–1.50)", "2"]
    assert text.endswith("\nFrom (in r/): a.json, b.json.\n")


def test_cli_reads_files_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for name, runs in (("a.json", RUN_A), ("b.json", RUN_B)):
        path = tmp_path / name
        path.write_text(json.dumps({"version": 1, "runs": runs}))
        files.append(str(path))
    out = tmp_path / "tally.md"
    assert tally.main([*files, "--out", str(out)]) == tally.EXIT_OK
    printed = capsys.readouterr().out
    assert "| spin c=8 | peer | 1 of 4 |" in printed
    assert out.read_text() == printed


@pytest.mark.parametrize(
    "content, complaint",
    [
        ("not json", "cannot read it as JSON"),
        ('{"runs": 3}', "not a peers.json"),
        ("[1, 2]", "not a peers.json"),
        ('{"runs": [{"server": "lightnode"}]}', "lacks function"),
    ],
)
def test_cli_refuses_what_is_not_a_peer_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, complaint: str
) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    assert tally.main([str(path)]) == tally.EXIT_USAGE
    err = capsys.readouterr().err
    assert str(path) in err and complaint in err


def test_cli_refuses_files_without_a_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "solo.json"
    path.write_text(json.dumps({"runs": [_run("peer", 10, 1)]}))
    assert tally.main([str(path)]) == tally.EXIT_USAGE
    assert "no round pairs lightnode" in capsys.readouterr().err


def test_shipped_results_tally(capsys: pytest.CaptureFixture[str]) -> None:
    """The repository's own runs read together (the table in BENCHMARKS.md)."""
    root = Path(__file__).resolve().parents[2] / "loadtest" / "results" / "2026-11-28"
    files = sorted(str(p) for p in root.glob("*run3[123].json"))
    if len(files) < 3:
        pytest.skip("the 2026-11-28 results are not in this tree")
    assert tally.main(files) == tally.EXIT_OK
    assert "| spin c=64 | gunicorn-uvicorn |" in capsys.readouterr().out


def test_a_round_the_peer_matches_is_not_won() -> None:
    even = [_run("lightnode", 100, 1), _run("peer", 100, 1)]
    (row,) = tally.pool_rounds([even])
    assert (row["won"], len(row["ratios"])) == (0, 1)
