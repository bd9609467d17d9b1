"""`lightnode package`, `deploy` and the lifecycle `admin` commands on a data directory (SPEC §6, §8)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lightnode.cli import main
from lightnode.services.store import DataDir
from tests.unit.admin.test_service_layer import make_src


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    DataDir(root).ensure_layout()
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_package_import_switch_cycle(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    code, out, _ = run(capsys, "package", str(src), "-o", str(tmp_path / "p.zip"), "--generation", "g1")
    assert code == 0 and "generation g1" in out
    assert zipfile.ZipFile(tmp_path / "p.zip").namelist()
    d = str(data)
    assert run(capsys, "admin", "import", "svc", str(tmp_path / "p.zip"), "--data-dir", d)[0] == 0
    code, _, err = run(capsys, "admin", "import", "svc", str(tmp_path / "p.zip"), "--data-dir", d)
    assert code == 1 and "already present" in err and "Traceback" not in err
    code, out, _ = run(capsys, "admin", "switch", "svc", "--newest", "--data-dir", d)
    assert code == 0 and "switched to g1" in out
    code, out, _ = run(capsys, "admin", "generations", "svc", "--data-dir", d)
    assert out.startswith("g1") and "mapped" in out
    assert run(capsys, "admin", "disable", "svc", "--data-dir", d)[0] == 0
    assert DataDir(data).read_state("svc").enabled is False
    code, out, _ = run(capsys, "admin", "services", "--data-dir", d)
    assert "svc\tenabled=False\tmapping=g1=1" in out
    code, _, err = run(capsys, "admin", "set-mapping", "svc", "g1=0.5", "g2=0.5", "--data-dir", d)
    assert code == 1 and "g2" in err
    assert run(capsys, "admin", "keys", "create", "--service", "svc", "--data-dir", d)[0] == 0
    code, out, err = run(capsys, "admin", "delete", "svc", "--data-dir", d)
    assert (code, out) == (0, "deleted service svc\n")
    assert "its 1 API key(s) stay in config/keys.json, valid for any service deployed as svc later" in err
    assert not (data / "services" / "svc").exists()


def test_package_says_which_earlier_packages_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    assert run(capsys, "package", str(src), "-o", str(src / "g1.zip"), "--generation", "g1")[0] == 0
    code, _, err = run(capsys, "package", str(src), "-o", str(src / "g2.zip"), "--generation", "g2")
    assert code == 0 and err == f"left out {src / 'g1.zip'}: an earlier package\n"
    assert "g1.zip" not in zipfile.ZipFile(src / "g2.zip").namelist()


def test_package_reports_service_json_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    (src / "service.json").write_text(json.dumps({"id": "svc", "endpoints": [{"id": "e", "type": "nope"}]}))
    code, _, err = run(capsys, "package", str(src), "-o", str(tmp_path / "p.zip"))
    assert code == 1
    assert str(src / "service.json") in err and "endpoints[0].type" in err and "endpoints[0].code" in err
    assert "Traceback" not in err and not (tmp_path / "p.zip").exists()


def test_deploy_is_package_import_switch(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    code, out, _ = run(capsys, "deploy", str(src), "--data-dir", str(data), "--generation", "g5")
    assert code == 0 and "deployed svc generation g5" in out
    state = json.loads((data / "services" / "svc" / "state.json").read_text())
    assert state == {"enabled": True, "mapping": {"entries": [{"generation": "g5", "proba": 1.0}]}}


def test_deploy_lets_a_node_of_another_user_open_its_package(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node opens the package by its path (import by --url): mkdtemp's 0700 shut it out.
    from lightnode.admin import lifecycle_cli

    modes: list[int] = []
    real = lifecycle_cli.call_target

    def spy(args: Any, operation: str, *params: Any, **kwargs: Any) -> Any:
        if operation == "import_archive":
            modes.append(Path(params[1]).parent.stat().st_mode & 0o777)
        return real(args, operation, *params, **kwargs)

    monkeypatch.setattr(lifecycle_cli, "call_target", spy)
    assert run(capsys, "deploy", str(make_src(tmp_path)), "--data-dir", str(data))[0] == 0
    assert modes == [0o755]


def test_keys_create_prints_the_key_alone(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "admin", "keys", "create", "--service", "svc", "--label", "ci", "--data-dir", str(data))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lnk_")
    key = lines[0]
    assert key not in err and key not in (data / "config" / "keys.json").read_text()
    code, out, _ = run(capsys, "admin", "keys", "list", "--data-dir", str(data))
    key_id = out.split("\t")[0]
    assert "service:svc" in out and "label=ci" in out and key not in out
    assert run(capsys, "admin", "keys", "delete", key_id, "--data-dir", str(data))[0] == 0
    _, out, _ = run(capsys, "admin", "keys", "create", "--admin", "--data-dir", str(data))
    assert run(capsys, "admin", "keys", "delete", out.strip(), "--data-dir", str(data))[0] == 0  # by the key itself
    assert json.loads((data / "config" / "keys.json").read_text()) == {"keys": []}
    code, _, err = run(capsys, "admin", "keys", "delete", "k000000000000", "--data-dir", str(data))
    assert code == 1 and "No API key" in err


def test_usage_errors_are_short(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "admin", "switch", "../x", "--newest", "--data-dir", str(data))
    assert code == 1 and "invalid service id" in err
    code, _, err = run(capsys, "admin", "enable", "svc", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "not a directory" in err
    code, _, err = run(capsys, "admin", "enable", "ghost", "--data-dir", str(data))
    assert code == 1 and "does not exist" in err
    with pytest.raises(SystemExit):
        main(["admin", "keys", "create", "--data-dir", str(data)])  # needs --service or --admin


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--data-dir", "D", "--port", "70000"], "--port: must be between 0 and 65535 (got 70000)"),
        (["serve", "--data-dir", "D", "--port", "-5"], "--port: must be between 0 and 65535 (got -5)"),
        (["dev", "D", "--port", "65536"], "--port: must be between 0 and 65535 (got 65536)"),
        (["admin", "status", "--url", "notaurl"], "--url: must be an http:// or https:// URL with a host"),
        (["admin", "services", "--url", "ftp://host"], "--url: must be an http:// or https:// URL with a host"),
        (["admin", "status", "--url", "http://127.0.0.1:abc"], "--url: bad port in 'http://127.0.0.1:abc'"),
        (["admin", "status", "--url", "http://127.0.0.1:70000"], "--url: bad port in 'http://127.0.0.1:70000'"),
    ],
)
def test_ports_and_urls_out_of_range_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [str(tmp_path / "d") if arg == "D" else arg for arg in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # refused before anything was created


def switched_then_broken(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """svc with g1 and g2, served from g1, then an empty state.json; returns --data-dir's value."""
    src = make_src(tmp_path)
    d = str(data)
    for generation in ("g1", "g2"):
        run(capsys, "package", str(src), "-o", str(tmp_path / f"{generation}.zip"), "--generation", generation)
        assert run(capsys, "admin", "import", "svc", str(tmp_path / f"{generation}.zip"), "--data-dir", d)[0] == 0
    assert run(capsys, "admin", "switch", "svc", "g1", "--data-dir", d)[0] == 0
    (data / "services" / "svc" / "state.json").write_text("")
    return d


@pytest.mark.parametrize(
    ("argv", "state"),
    [
        (["switch", "svc", "g2"], {"enabled": True, "mapping": {"entries": [{"generation": "g2", "proba": 1.0}]}}),
        (["switch", "svc", "--newest"], None),  # whichever is newest: the file parses again
        (["set-mapping", "svc", "g1=0.5", "g2=0.5"], {"enabled": True, "mapping": {"entries": [
            {"generation": "g1", "proba": 0.5}, {"generation": "g2", "proba": 0.5}]}}),
        (["disable", "svc"], {"enabled": False, "mapping": {"entries": []}}),
    ],
    ids=["switch", "switch-newest", "set-mapping", "disable"],
)
def test_a_refused_state_json_is_repaired_by_the_cli(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], argv: list[str], state: dict | None
) -> None:
    d = switched_then_broken(tmp_path, data, capsys)
    code, out, err = run(capsys, "admin", *argv, "--data-dir", d)
    assert code == 0, err
    written = json.loads((data / "services" / "svc" / "state.json").read_text())
    assert state is None or written == state
    if argv[0] == "disable":
        assert "could not be read" in out + err  # the operator learns the mapping is gone


def test_enable_on_a_refused_state_json_says_what_to_do(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = switched_then_broken(tmp_path, data, capsys)
    code, _, err = run(capsys, "admin", "enable", "svc", "--data-dir", d)
    assert code == 1 and "invalid JSON" in err and "switch" in err and "set-mapping" in err
    assert "Traceback" not in err


def test_generations_are_listed_when_state_json_is_refused(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = switched_then_broken(tmp_path, data, capsys)
    code, out, err = run(capsys, "admin", "generations", "svc", "--data-dir", d)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["g1", "g2"]
    assert "mapping" in err and "invalid JSON" in err


def test_a_refused_server_json_blocks_only_imports(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A leaked key must be revocable even while server.json is refused (SPEC §8, §9)."""
    d = switched_then_broken(tmp_path, data, capsys)
    (data / "config" / "server.json").write_text(json.dumps({"typo": 1}))
    assert run(capsys, "admin", "tune", "svc", "e", "--ceil", "3", "--data-dir", d)[0] == 0
    code, out, _ = run(capsys, "admin", "keys", "create", "--admin", "--data-dir", d)
    assert code == 0
    code, listed, _ = run(capsys, "admin", "keys", "list", "--data-dir", d)
    assert code == 0
    assert run(capsys, "admin", "keys", "delete", listed.split("\t")[0], "--data-dir", d)[0] == 0
    assert run(capsys, "admin", "disable", "svc", "--data-dir", d)[0] == 0
    code, out, _ = run(capsys, "admin", "services", "--data-dir", d)
    assert code == 0 and out.startswith("svc\t")
    code, _, err = run(capsys, "admin", "import", "svc", str(tmp_path / "g1.zip"), "--data-dir", d)
    assert code == 1 and f"{data / 'config' / 'server.json'}: typo: unknown key" in err


def test_tune_replaces_a_refused_file_and_says_so(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data / "config" / "services" / "rs" / "ep.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"pool": {"ceil": 4}')
    code, out, err = run(capsys, "admin", "tune", "rs", "ep", "--ceil", "3", "--data-dir", str(data))
    assert code == 0, err
    assert "replaced the refused tuning file" in out and "invalid JSON" in out and "defaults" in out
    assert json.loads(path.read_text())["pool"]["ceil"] == 3
    code, _, err = run(capsys, "admin", "tune", "rs", "other", "--floor", "9", "--data-dir", str(data))
    assert code == 1 and str(data / "config" / "services" / "rs" / "other.json") in err and "defaults:" not in err


def test_deploy_url_is_checked_and_takes_the_key_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightnode.cli import build_parser

    monkeypatch.setenv("LIGHTNODE_ADMIN_KEY", "lnk_from_env")
    args = build_parser().parse_args(["deploy", str(tmp_path), "--url", "http://127.0.0.1:1"])
    assert args.key == "lnk_from_env"
    with pytest.raises(SystemExit) as info:
        main(["deploy", str(make_src(tmp_path)), "--url", "notaurl"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--url: must be an http:// or https:// URL" in err and "Traceback" not in err


def test_a_bad_url_is_a_remote_error_not_a_traceback() -> None:
    from lightnode.admin.remote import RemoteAdmin, RemoteError

    for url in ("notaurl", "http://"):
        with pytest.raises(RemoteError, match="cannot reach"):
            RemoteAdmin(url).call("GET", "services")


def test_status_shows_the_switch_error() -> None:
    from lightnode.admin.cli import render_status

    service = {"serviceId": "svc", "enabled": True, "mapping": [{"generation": "v1", "proba": 1.0}],
               "error": None, "switchError": "switch not applied: generation b3 failed to load (ImportError)",
               "generationErrors": {}, "endpoints": []}
    text = render_status({"services": [service]})
    assert "switchError: switch not applied: generation b3 failed to load (ImportError)" in text
    assert "switchError" not in render_status({"services": [{**service, "switchError": None}]})


def test_status_shows_every_tuning_value_in_force() -> None:
    """An operator could not tell from `status` whether an exec timeout was in force:
    scale_down_delay, prefetch and the limits were in the stats JSON only."""
    from lightnode.admin.cli import render_status

    endpoint = {"endpointId": "e", "generation": "v1", "loadState": "ready",
                "pipelinesByState": {"idle": 1}, "queueLength": 0, "stagedRequests": 0, "oldestWaitMs": 0.0,
                "config": {"pool": {"floor": 1, "cruise": 2, "ceil": 4, "queue": 16, "timeout": 10000,
                                    "scale_down_delay": 5000, "prefetch": 0},
                           "limits": {"exec_timeout": 2000, "max_requests": 0, "max_rss_mb": 512}},
                "configSource": "config/services/svc/e.json", "lastStart": {"secondsAgo": None, "durationMs": None},
                "lastLoadError": None, "lastConfigError": None,
                "counters": {"served": 0, "starts": 1, "crashes": 0, "retirements": 0, "rejections": {}}}
    service = {"serviceId": "svc", "enabled": True, "mapping": [], "error": None, "switchError": None,
               "generationErrors": {}, "endpoints": [endpoint]}
    text = render_status({"services": [service]})
    assert "scale_down_delay=5000ms prefetch=0 from config/services/svc/e.json" in text
    assert "    limits exec_timeout=2000ms max_requests=none max_rss_mb=512MB" in text


def test_status_of_a_floor_0_endpoint_never_called_is_not_loading() -> None:
    """It read "loading" for ever at idle: nothing loads until its first request."""
    assert "e@v1: not loaded (floor 0: loads at its first request) pipelines" in _status_of(floor=0)
    assert "e@v1: loading pipelines starting=1" in _status_of(floor=0, starting=1)


@pytest.mark.parametrize(
    "argv",
    [["--data-dir", ""], ["serve", "--data-dir", ""], ["admin", "services", "--data-dir", ""],
     ["deploy", "SRC", "--data-dir", ""]],
)
def test_an_empty_data_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """`--data-dir ""` would be the current directory: refused before anything is created there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unrelated.txt").write_text("x")
    argv = [str(tmp_path / "src") if arg == "SRC" else arg for arg in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--data-dir: must not be empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


def test_init_of_an_empty_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lightnode init ""` would lay the sample out in the current directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["init", ""])
    assert info.value.code == 2 and "dir: must not be empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _status_of(*, floor: int, starting: int = 0, pipelines: list[dict[str, Any]] | None = None) -> str:
    """render_status of one service with one loading endpoint `e@v1`."""
    from lightnode.admin.cli import render_status

    endpoint = {"endpointId": "e", "generation": "v1", "loadState": "loading",
                "pipelinesByState": {"starting": starting, "idle": 0, "busy": 0, "stopping": 0},
                "pipelines": pipelines or [],
                "queueLength": 0, "stagedRequests": 0, "oldestWaitMs": 0.0,
                "config": {"pool": {"floor": floor, "cruise": 2, "ceil": 4, "queue": 16, "timeout": 10000}},
                "configSource": "defaults", "lastStart": {"secondsAgo": None, "durationMs": None},
                "lastLoadError": None, "lastConfigError": None,
                "counters": {"served": 0, "starts": starting, "crashes": 0, "retirements": 0, "rejections": {}}}
    service = {"serviceId": "svc", "enabled": True, "mapping": [], "error": None, "switchError": None,
               "generationErrors": {}, "endpoints": [endpoint]}
    return render_status({"services": [service]})


def test_status_tells_pipelines_waiting_for_a_start_slot_from_those_booting() -> None:
    pipelines = [{"workerId": 1, "pid": 4242, "state": "starting"},
                 {"workerId": 2, "pid": None, "state": "starting"},
                 {"workerId": 3, "pid": None, "state": "starting"}]
    text = _status_of(floor=3, starting=3, pipelines=pipelines)
    assert "e@v1: loading pipelines starting=3 (2 waiting for a start slot) idle=0" in text
    assert "pipelines starting=3 idle=0" in _status_of(floor=3, starting=3, pipelines=pipelines[:1])


def test_remote_tune_overlays_on_the_client_for_a_node_without_the_tune_route() -> None:
    # An older node answers 404 for .../tune: the change is overlaid here, on its settings.
    # A 404 of the service itself is no missing route: it is the answer.
    import http.server
    import threading

    from lightnode.admin.remote import RemoteAdmin, RemoteError

    seen: list[tuple[str, str]] = []
    settings = {"pool": {"floor": 1, "ceil": 8}, "limits": {}}

    class OlderNode(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(("GET", self.path))
            self._answer(200, settings)

        def do_POST(self) -> None:
            seen.append(("POST", self.path))
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if "/services/gone/" in self.path:
                self._answer(404, {"errorType": "NotFound", "message": "Service gone does not exist"})
            elif self.path.endswith("/tune"):
                self._answer(404, {"errorType": "NotFound", "message": "Not found: " + self.path})
            else:
                self._answer(200, json.loads(body))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OlderNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = RemoteAdmin(f"http://127.0.0.1:{server.server_address[1]}")
        assert remote.tune("s", "e", {"pool": {"ceil": 4}}) == {"pool": {"floor": 1, "ceil": 4}, "limits": {}}
        assert [(m, p.rsplit("/", 1)[1]) for m, p in seen] == [("POST", "tune"), ("GET", "settings"), ("POST", "settings")]
        seen.clear()
        with pytest.raises(RemoteError, match="does not exist"):
            remote.tune("gone", "e", {"pool": {"ceil": 4}})
        assert len(seen) == 1
    finally:
        server.shutdown()
        server.server_close()
