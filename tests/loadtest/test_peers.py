"""The peer benchmark's pure parts (commands, /proc parsing, wrk parsing, medians and
tables, the peer apps) and one short real round against lightnode (`-m load`)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lightnode.pool.machine import MAX_STAGED
from loadtest.peers import apps, cli, procstat, runner, servers, table, wrk

PORT = 43210


# -- server commands ----------------------------------------------------------------


def test_every_server_binds_loopback_on_the_given_port(tmp_path: Path) -> None:
    for name in servers.SERVER_NAMES + servers.EXTRA_NAMES:
        argv = servers.server_command(name, PORT, data_dir=tmp_path, python="py")
        text = " ".join(argv)
        assert argv[:2] == ["py", "-m"]
        assert "127.0.0.1" in text and str(PORT) in text, name
        assert "0.0.0.0" not in text


def test_peer_commands_match_the_issue() -> None:
    def command(name: str) -> list[str]:
        return servers.server_command(name, PORT, python="py")

    sync = command("gunicorn-sync")
    assert sync[2] == "gunicorn" and ["--workers", "2"] == sync[5:7]
    assert sync[-3:] == ["--worker-class", "sync", servers.WSGI_APP]
    uvw = command("gunicorn-uvicorn")
    assert uvw[-3:] == ["--worker-class", "uvicorn.workers.UvicornWorker", servers.ASGI_APP]
    assert "--bind" in uvw and f"127.0.0.1:{PORT}" in uvw
    for interface, app in (("wsgi", servers.WSGI_APP), ("asgi", servers.ASGI_APP)):
        granian = command(f"granian-{interface}")
        assert granian[2] == "granian" and granian[-3:] == ["--interface", interface, app]
        assert granian[granian.index("--workers") + 1] == "2"
    uvicorn = command("uvicorn")
    assert uvicorn[2:4] == ["uvicorn", servers.ASGI_APP] and "--workers" not in uvicorn
    assert ["--loop", "uvloop", "--http", "httptools"] == uvicorn[8:12]


def test_lightnode_command_needs_its_data_dir(tmp_path: Path) -> None:
    argv = servers.server_command("lightnode", PORT, data_dir=tmp_path, python="py")
    assert argv == ["py", "-m", "lightnode", "--data-dir", str(tmp_path), "--host",
                    "127.0.0.1", "--port", str(PORT)]  # fmt: skip
    with pytest.raises(ValueError):
        servers.server_command("lightnode", PORT)
    with pytest.raises(KeyError):
        servers.server_command("nginx", PORT)


def test_lightnode_tuning_is_two_fixed_pipelines_with_a_deep_queue() -> None:
    pool = servers.lightnode_tuning("add")["pool"]
    assert pool["floor"] == pool["cruise"] == pool["ceil"] == 2
    assert pool["queue"] >= 64
    assert servers.lightnode_tuning("spin") == servers.lightnode_tuning("add")
    assert servers.lightnode_tuning("sleep")["pool"]["floor"] == 0


def test_select_keeps_canonical_order_and_refuses_unknown_names() -> None:
    assert [s.name for s in servers.select("uvicorn, lightnode")] == ["lightnode", "uvicorn"]
    assert servers.select(None) == servers.SERVERS
    with pytest.raises(KeyError, match="unknown server"):
        servers.select("lightnode,tornado")


def test_the_floor_runs_only_when_named() -> None:
    assert "floor" not in [s.name for s in servers.select(None)]
    assert [s.name for s in servers.select("floor,lightnode")] == ["lightnode", "floor"]
    argv = servers.server_command("floor", PORT, python="py")
    assert argv[:3] == ["py", "-m", "loadtest.peers.floor"]
    assert argv[argv.index("--pipelines") + 1] == str(servers.PIPELINES)
    # As deep as lightnode's deepest pipe: the running call and the most it prefetches.
    assert argv[argv.index("--depth") + 1] == str(servers.FLOOR_DEPTH) == str(MAX_STAGED + 1)


def test_harness_command_is_a_closed_loop_run_of_the_bench_service(tmp_path: Path) -> None:
    argv = runner.harness_command(
        "http://127.0.0.1:1", "add", 64, 2.5, tmp_path, procs=2, python="py"
    )
    assert argv[:5] == ["py", "-m", "loadtest", "run", "http://127.0.0.1:1"]
    options = dict(zip(argv[5::2], argv[6::2], strict=False))
    assert options["--service"] == "bench" and options["--endpoint"] == "add"
    assert json.loads(options["--body"]) == {"a": 1, "b": 2}
    assert options["--connections"] == "64" and options["--duration"] == "2.5"
    assert options["--procs"] == "2" and options["--out"] == str(tmp_path)
    assert "--rate" not in argv and "--warmup" not in argv and argv[-1] == "--quiet"


def test_harness_command_is_accepted_by_the_harness_parser(tmp_path: Path) -> None:
    from loadtest.cli import build_parser

    argv = runner.harness_command("http://127.0.0.1:1", "spin", 8, 3, tmp_path)
    args = build_parser().parse_args(argv[3:])
    assert (args.connections, args.duration, args.endpoint, args.body) == (8, 3.0, "spin", "{}")


def test_rounds_rotate_the_server_order() -> None:
    names = ["a", "b", "c"]
    assert runner.round_order(names, 0) == ["a", "b", "c"]
    assert runner.round_order(names, 1) == ["b", "c", "a"]
    assert runner.round_order(names, 3) == names
    assert runner.round_order([], 2) == []


def test_crosscheck_cases_are_lightnode_add_and_spin_at_the_top_concurrency(tmp_path: Path) -> None:
    config = runner.BenchConfig(out_dir=tmp_path, concurrencies=(8, 64))
    assert runner.crosscheck_cases(config) == (("lightnode", "add", 64), ("lightnode", "spin", 64))
    add_only = runner.BenchConfig(out_dir=tmp_path, functions=("add",), concurrencies=(8,))
    assert runner.crosscheck_cases(add_only) == (("lightnode", "add", 8),)
    no_wrk = runner.BenchConfig(out_dir=tmp_path, crosscheck=False)
    assert runner.crosscheck_cases(no_wrk) == ()
    peers_only = runner.BenchConfig(out_dir=tmp_path, servers=("uvicorn",))
    assert runner.crosscheck_cases(peers_only) == ()
    wrk_load = runner.BenchConfig(out_dir=tmp_path, generator="wrk")
    assert runner.crosscheck_cases(wrk_load) == ()  # wrk makes every run's load already


def test_wrk_command_and_script() -> None:
    argv = wrk.command("http://127.0.0.1:1/x", 64, 2.2, Path("/tmp/post.lua"))
    assert argv == ["wrk", "-t1", "-c64", "-d3s", "--latency", "-s", "/tmp/post.lua",
                    "http://127.0.0.1:1/x"]  # fmt: skip
    script = wrk.script({"a": 1, "b": 2})
    assert 'wrk.method = "POST"' in script and 'wrk.body = [[{"a":1,"b":2}]]' in script
    assert wrk.lua_quote("x]]y") == "[=[x]]y]=]"
    assert (wrk.whole_seconds(10), wrk.whole_seconds(2.2), wrk.whole_seconds(0.3)) == (10, 3, 1)


def test_child_env_puts_the_repo_first_on_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    path = runner.child_env()["PYTHONPATH"].split(":")
    assert path == [str(runner.REPO_ROOT), "/elsewhere"]


# -- /proc and wrk parsing ----------------------------------------------------------


def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0) -> str:
    rest = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), str(cutime), "0", "20", "0"]
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def test_parse_stat_survives_odd_command_names() -> None:
    line = procstat.parse_stat(_stat(42, "a) (b c", 7, 100, 50, cutime=5))
    assert line == procstat.StatLine(ppid=7, ticks=155)
    with pytest.raises(ValueError):
        procstat.parse_stat("garbage")


def test_tree_ticks_sums_descendants_only() -> None:
    table_ = {
        10: procstat.StatLine(1, 100),  # the server
        11: procstat.StatLine(10, 30),  # worker
        12: procstat.StatLine(10, 20),  # worker
        13: procstat.StatLine(11, 5),  # grandchild
        20: procstat.StatLine(1, 999),  # unrelated
    }
    assert procstat.tree_ticks(table_, 10) == (155, 4)
    assert procstat.tree_ticks(table_, 11) == (35, 2)
    assert procstat.tree_ticks(table_, 99) == (0, 0)


def test_tree_cpu_of_this_process_is_positive() -> None:
    cpu = procstat.tree_cpu(__import__("os").getpid())
    assert cpu.total_s >= cpu.root_s > 0 and cpu.processes >= 1


WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40000/public/api/v1/bench/add/run
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  500.00us  20.00ms   90.00%
    Req/Sec    30.12k     1.00k   32.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    2.00ms
     90%    3.50ms
     99%    1.20s
  301234 requests in 10.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30123.40
Transfer/sec:      6.00MB
"""


def test_parse_wrk_reads_throughput_percentiles_and_errors() -> None:
    parsed = wrk.parse(WRK_OUTPUT)
    assert parsed["throughput_rps"] == 30123.4 and parsed["requests"] == 301234
    assert parsed["latency_ms"] == {"p50": 0.85, "p75": 2.0, "p90": 3.5, "p99": 1200.0}
    assert (parsed["non_2xx"], parsed["socket_errors"], parsed["errors"]) == (4, 3, 7)
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


# -- medians, ratios, tables --------------------------------------------------------


def _run(server: str, rps: float, p99: float, cpu: float | None, **extra: Any) -> dict[str, Any]:
    record = {"server": server, "function": "add", "concurrency": 64, "round": 1}
    record.update(throughput_rps=rps, latency_ms={"p50": p99 / 4, "p99": p99})
    record.update(cpu_us_per_request=cpu, errors=0, generator_saturated=False)
    record.update(extra)
    return record


def test_summarize_takes_medians_and_counts_failures() -> None:
    runs = [
        _run("lightnode", 100, 4.0, 20.0),
        _run("lightnode", 300, 1.0, 30.0),
        _run("lightnode", 200, 2.0, None, errors=3),
        {"server": "lightnode", "function": "add", "concurrency": 64, "failed": "exit 3"},
        _run("uvicorn", 50, 8.0, 40.0),
    ]
    rows = table.summarize(runs)
    assert [row["server"] for row in rows] == ["lightnode", "uvicorn"]
    light = rows[0]
    assert (light["throughput_rps"], light["p99_ms"], light["cpu_us_per_request"]) == (200, 2, 25)
    assert (light["runs"], light["failed_runs"], light["errors"]) == (3, 1, 3)


def test_markdown_has_one_table_per_case_with_ratios_to_lightnode() -> None:
    runs = [
        _run("lightnode", 1000, 2.0, 20.0, root_cpu_us_per_request=12.5),
        _run("uvicorn", 500, 8.0, 40.0, generator_saturated=True),
        {**_run("lightnode", 100, 10.0, 100.0), "function": "spin", "concurrency": 8},
    ]
    text = table.render_markdown(table.summarize(runs), rounds=3, duration_s=10)
    assert "### add, c=64 (median of 3 rounds of 10 s)" in text
    assert "### spin, c=8" in text
    uvicorn = next(line for line in text.splitlines() if line.startswith("| uvicorn"))
    cells = [cell.strip() for cell in uvicorn.strip("|").split("|")]
    assert cells[:9] == [
        "uvicorn (generator saturated)", "500", "0.50×", "0.50×", "2.00", "8.00", "4.00×", "40.0",
        "2.00×",
    ]  # fmt: skip
    lightnode = next(line for line in text.splitlines() if line.startswith("| lightnode | 1,000"))
    assert lightnode.count("1.00×") == 3 and "| – |" in lightnode  # no ratio to itself per round
    assert "node process alone: 12.5 µs CPU per request" in text


def test_ratios_per_round_pair_each_server_with_lightnode_in_the_same_round() -> None:
    """A machine that is slow in one round: the ratio of medians pairs lightnode's slow
    round with the peer's fast one; the per-round ratios do not."""
    runs = [
        _run("lightnode", 100, 1.0, 20.0, round=1),
        _run("peer", 90, 1.0, 20.0, round=1),
        _run("lightnode", 60, 1.0, 20.0, round=2),  # the slow round
        _run("peer", 140, 1.0, 20.0, round=2),  # measured after the machine recovered
        _run("lightnode", 110, 1.0, 20.0, round=3),
        _run("peer", 100, 1.0, 20.0, round=3),
        _run("peer", 500, 1.0, 20.0, round=4),  # no lightnode run in round 4: not paired
    ]
    rows = {row["server"]: row for row in table.summarize(runs)}
    peer = rows["peer"]
    assert peer["round_ratios"] == pytest.approx([0.9, 140 / 60, 100 / 110])
    assert rows["lightnode"]["round_ratios"] == []
    text = table.render_markdown(list(rows.values()), rounds=3, duration_s=10)
    line = next(line for line in text.splitlines() if line.startswith("| peer"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    # ratio of medians (120 / 100), then the median of the three paired ratios and their range
    # and in how many rounds lightnode served more (the peer's ratio below 1.0)
    assert cells[2:4] == ["1.20×", "0.91× (0.90–2.33; lightnode ahead 2/3)"]


def test_ratios_are_blank_without_lightnode() -> None:
    text = table.render_markdown(table.summarize([_run("uvicorn", 500, 8.0, 40.0)]), rounds=1,
                                 duration_s=3)  # fmt: skip
    assert "0.50×" not in text and "| uvicorn | 500 | – |" in text
    assert "median of 1 round of 3 s" in text


def test_crosscheck_tolerance_and_table() -> None:
    assert table.crosscheck_entry(95.0, 100.0)["within_tolerance"] is True
    assert table.crosscheck_entry(89.0, 100.0)["within_tolerance"] is False
    assert table.crosscheck_entry(None, 100.0) == {
        "harness_over_wrk": None,
        "within_tolerance": False,
    }
    before = {"throughput_rps": 1100.0, "requests": 11000, "cpu_s": 0.11, "latency_ms": {"p99": 2.0}}
    after = {"throughput_rps": 900.0, "requests": 9000, "cpu_s": 0.117, "latency_ms": {"p99": 3.0}}
    entry = {"round": 2, "server": "lightnode", "function": "add", "concurrency": 64,
             "harness_rps": 950.0, "harness_p99_ms": 3.0,
             "harness_cpu_us_per_request": table.generator_cpu_us(1.33, 950.0),
             **table.wrk_bracket(before, after), **table.crosscheck_entry(950.0, 1000.0)}  # fmt: skip
    assert (entry["wrk_rps"], entry["wrk_p99_ms"]) == (1000.0, 2.5)  # the means of both runs
    assert entry["wrk_cpu_us_per_request"] == pytest.approx(11.5)  # 10 and 13 µs per request
    assert entry["harness_cpu_us_per_request"] == pytest.approx(14.0)  # 1.33 % of a core / 950
    lines = table.render_crosscheck([entry])
    assert lines[-2] == (
        "| 2 | lightnode add c=64 | 950 | 1,000 (1,100 / 900) | 0.950 | 3.00 | 2.50 "
        "| 14.0 / 11.5 | yes |"
    )
    assert table.generator_cpu_us(None, 950.0) is None and table.generator_cpu_us(50.0, 0) is None


def test_wrk_bracket_uses_the_run_that_worked() -> None:
    after = {"throughput_rps": 900.0, "latency_ms": {"p99": None}}
    assert table.wrk_bracket(None, after) == {
        "wrk_rps": 900.0, "wrk_p99_ms": None, "wrk_before_rps": None, "wrk_after_rps": 900.0,
        "wrk_cpu_us_per_request": None,  # no cpu_s: an older record, or a parse of its own
    }  # fmt: skip
    assert table.wrk_bracket(None, None)["wrk_rps"] is None


def test_run_record_computes_cpu_per_request() -> None:
    report = {
        "requests": 1000, "responses": 1000, "duration_s": 1.0, "throughput_rps": 1000.0,
        "ok_rps": 990.0, "latency_ms": {"p50": 1.0, "p99": 3.0}, "errors": 10,
        "status_counts": {"200": 990, "503": 10}, "generator": {"cpu_pct": 50, "saturated": True},
    }  # fmt: skip
    record = runner.run_record(
        report, cpu_s=0.025, root_cpu_s=0.01, server_procs=3, server="x", round=1
    )
    assert record["cpu_us_per_request"] == 25.0 and record["server"] == "x"
    assert record["root_cpu_us_per_request"] == 10.0
    assert record["generator_saturated"] is True and record["latency_ms"]["p90"] is None
    empty = runner.run_record({}, cpu_s=1.0, server_procs=1)
    assert empty["cpu_us_per_request"] is None and empty["root_cpu_us_per_request"] is None


def test_wrk_run_record_has_the_shape_of_a_harness_run() -> None:
    parsed = wrk.parse(WRK_OUTPUT)  # 301,234 requests, 4 non-2xx, 3 socket errors
    record = runner.wrk_run_record(
        parsed, seconds=10, cpu_s=6.02468, root_cpu_s=3.01234, server_procs=3,
        generator_cpu_s=4.5, server="lightnode", function="add", concurrency=64, round=2,
    )  # fmt: skip
    harness_shaped = runner.run_record({}, cpu_s=1.0, server_procs=1)
    assert set(harness_shaped) <= set(record)
    assert (record["server"], record["function"], record["concurrency"]) == ("lightnode", "add", 64)
    assert (record["requests"], record["responses"], record["duration_s"]) == (301234, 301234, 10)
    assert record["throughput_rps"] == 30123.4 and record["errors"] == 7
    assert record["ok_rps"] == round(30123.4 * (301234 - 4) / 301234, 2)
    assert record["latency_ms"] == {"p50": 0.85, "p90": 3.5, "p99": 1200.0, "p999": None, "max": None}
    assert record["cpu_us_per_request"] == 20.0 and record["root_cpu_us_per_request"] == 10.0
    assert record["generator"] == "wrk" and record["generator_cpu_pct"] == 45.0
    assert record["generator_saturated"] is False
    # Summarized and rendered like a harness run, its heading naming wrk as the load.
    text = table.render_markdown(table.summarize([record]), rounds=1, duration_s=10, generator="wrk")
    assert "### add, c=64 (median of 1 round of 10 s, load from wrk -t1)" in text
    assert "| lightnode | 30,123 | 1.00× |" in text
    assert "load from wrk" not in table.render_markdown(table.summarize([record]), rounds=1,
                                                         duration_s=10)  # fmt: skip


def test_cpu_model_from_cpuinfo() -> None:
    info = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\n"
    assert runner.cpu_model(info) == "Some CPU @ 2.0GHz"
    assert runner.cpu_model("") is None


# -- command line -------------------------------------------------------------------


def test_cli_parses_lists_and_refuses_bad_values() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["--concurrency", "1,16", "--functions", "spin", "--rounds", "2"])
    assert (args.concurrency, args.functions, args.rounds) == ((1, 16), ("spin",), 2)
    defaults = parser.parse_args([])
    assert (defaults.rounds, defaults.duration, defaults.concurrency) == (3, 10.0, (8, 64))
    assert defaults.generator == "harness"
    assert parser.parse_args(["--generator", "wrk"]).generator == "wrk"
    bad_values = (["--concurrency", "0"], ["--functions", "sleep"], ["--duration", "0"],
                  ["--generator", "ab"])  # fmt: skip
    for bad in bad_values:
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_cli_refuses_an_unknown_server(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--only", "tornado"])
    assert exit_info.value.code == 2 and "unknown server" in capsys.readouterr().err


# -- the peer apps ------------------------------------------------------------------


def test_apps_run_the_very_functions_lightnode_serves() -> None:
    bench = apps.load_bench()
    assert apps.FUNCTIONS["spin"].__code__.co_code == bench.spin.__code__.co_code
    assert Path(apps.FUNCTIONS["spin"].__code__.co_filename) == servers.BENCH_DIR / "bench.py"


def test_handle_answers_the_lightnode_envelope() -> None:
    status, body = apps.handle("POST", "/public/api/v1/bench/add/run", b'{"a": 1, "b": 2}')
    payload = json.loads(body)
    assert status == 200 and payload["response"] == {"sum": 3}
    assert set(payload["timing"]) == {"wait", "execution", "functionInternal"}
    assert payload["apiContext"]["serviceId"] == "bench"
    assert payload["apiContext"]["endpointId"] == "add"
    assert apps.handle("POST", "/public/api/v1/bench/nope/run", b"")[0] == 404
    assert apps.handle("POST", "/public/api/v1/bench/add/run", b"{not json")[0] == 400
    assert apps.handle("POST", "/public/api/v1/bench/add/run", b"[1]")[0] == 400
    assert apps.handle("GET", "/public/api/v1/bench/add/run", b"")[0] == 405
    assert apps.handle("POST", "/public/api/v1/bench/add/run", b'{"c": 1}')[0] == 500


def test_wsgi_app_answers_with_lightnode_headers() -> None:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/public/api/v1/bench/spin/run",
        "CONTENT_LENGTH": "20",
        "wsgi.input": io.BytesIO(b'{"iterations": 10}  '),
    }
    body = b"".join(apps.wsgi_app(environ, start_response))
    assert seen["status"] == "200 OK"
    assert seen["headers"]["content-length"] == str(len(body))
    assert seen["headers"]["dss-apinode-api-version"] == "1"
    assert seen["headers"]["x-request-id"]
    assert json.loads(body)["response"] == {"iterations": 10, "total": 285}


def test_asgi_app_reads_a_chunked_body_and_answers() -> None:
    messages = [
        {"type": "http.request", "body": b'{"a": 2,', "more_body": True},
        {"type": "http.request", "body": b' "b": 5}', "more_body": False},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/public/api/v1/bench/add/run"}
    asyncio.run(apps.asgi_app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert json.loads(sent[1]["body"])["response"] == {"sum": 7}


def test_asgi_lifespan_completes() -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    asyncio.run(apps.asgi_app({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- a real round (out of the default run) ------------------------------------------


@pytest.mark.load
@pytest.mark.timeout(180)
def test_one_second_round_against_lightnode(tmp_path: Path) -> None:
    import subprocess

    argv = [sys.executable, "-m", "loadtest.peers", "--only", "lightnode", "--rounds", "1",
            "--duration", "1", "--concurrency", "64", "--warmup", "0.5", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=170, env=runner.child_env())
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "peers.json").read_text())
    runs = result["runs"]
    assert {(r["function"], r["concurrency"]) for r in runs} == {("add", 64), ("spin", 64)}
    for run in runs:
        assert "failed" not in run and run["errors"] == 0 and run["throughput_rps"] > 0
        assert run["status_counts"] == {"200": run["responses"]}
        assert run["server_procs"] >= 5  # the node and two pipelines for each of add and spin
        assert run["cpu_us_per_request"] > run["root_cpu_us_per_request"] > 0
    if wrk.available():
        checks = result["crosscheck"]
        assert [(c["function"], c["concurrency"]) for c in checks] == [("add", 64), ("spin", 64)]
        for check in checks:
            assert check["wrk_rps"] > 0
            assert check["wrk_before_rps"] > 0 and check["wrk_after_rps"] > 0  # brackets the harness
            assert check["harness_cpu_us_per_request"] > 0 and check["wrk_cpu_us_per_request"] > 0
            assert "| generator CPU µs/req (harness / wrk) |" in done.stdout
    assert "### add, c=64" in done.stdout and (tmp_path / "peers.md").exists()
    assert result["summary"][0]["server"] == "lightnode"


@pytest.mark.load
@pytest.mark.timeout(180)
@pytest.mark.skipif(not wrk.available(), reason="wrk is not installed")
def test_one_second_round_against_lightnode_with_wrk_as_the_load(tmp_path: Path) -> None:
    import subprocess

    argv = [sys.executable, "-m", "loadtest.peers", "--only", "lightnode", "--rounds", "1",
            "--duration", "1", "--concurrency", "8", "--warmup", "0.5", "--generator", "wrk",
            "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=170, env=runner.child_env())
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "peers.json").read_text())
    assert result["config"]["generator"] == "wrk" and result["crosscheck"] == []
    runs = result["runs"]
    assert {(r["function"], r["concurrency"]) for r in runs} == {("add", 8), ("spin", 8)}
    for run in runs:
        assert run["generator"] == "wrk" and "failed" not in run
        assert run["command"][0] == "wrk" and run["command"][-1].endswith(f"/{run['function']}/run")
        assert run["errors"] == 0 and run["requests"] > 0 and run["throughput_rps"] > 0
        assert run["cpu_us_per_request"] > run["root_cpu_us_per_request"] > 0
        assert run["generator_cpu_pct"] > 0  # wrk's own CPU, from the children's rusage
    assert list((tmp_path / "wrk").glob("r1-lightnode-*-run.txt"))  # wrk's own output, kept
    assert "(median of 1 round of 1 s, load from wrk -t1)" in done.stdout
