"""SPEC §8 as a list: every command it names answers --help with the flags it names,
the command line overrides server.json, and the errors of `serve`/`init` are short and right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightnode.cli import build_parser, main
from lightnode.daemon import DaemonOptions, settings_for

# (argv of the command, the options SPEC §8 names for it)
SPEC_COMMANDS = [
    (["serve"], ["--data-dir", "--host", "--port", "--log-level", "--pidfile"]),
    (["init"], ["dir", "--data-dir"]),
    (["dev"], ["SRC_DIR", "--host", "--port"]),
    (["test"], ["SRC_DIR", "--json"]),
    (["package"], ["SRC_DIR", "-o", "--generation"]),
    (["deploy"], ["SRC_DIR", "--data-dir", "--generation"]),
    (["admin"], ["services", "status", "import", "switch", "enable", "disable", "set-mapping",
                 "delete", "tune", "keys", "build-env"]),
    (["admin", "services"], ["--data-dir", "--url", "--key"]),
    (["admin", "status"], ["--data-dir", "--url", "--key", "service"]),
    (["admin", "import"], ["--data-dir", "--url", "--key", "service", "archive"]),
    (["admin", "switch"], ["--data-dir", "--url", "--newest", "generation"]),
    (["admin", "enable"], ["--data-dir", "--url", "service"]),
    (["admin", "disable"], ["--data-dir", "--url", "service"]),
    (["admin", "set-mapping"], ["--data-dir", "--url", "GEN=PROBA"]),
    (["admin", "delete"], ["--data-dir", "--url", "service"]),
    (["admin", "tune"], ["--data-dir", "--url", "--floor", "--cruise", "--ceil", "--queue", "--timeout"]),
    (["admin", "keys"], ["create", "list", "delete"]),
    (["admin", "keys", "create"], ["--service", "--admin", "--label", "--data-dir", "--url"]),
    (["admin", "keys", "list"], ["--data-dir", "--url"]),
    (["admin", "keys", "delete"], ["ID", "--data-dir", "--url"]),
    (["admin", "build-env"], ["--data-dir", "service", "generation"]),
]  # fmt: skip


@pytest.mark.parametrize(("command", "options"), SPEC_COMMANDS, ids=[" ".join(c) for c, _ in SPEC_COMMANDS])
def test_every_spec_command_answers_help_with_its_options(
    command: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0 and err == ""
    assert out.startswith(f"usage: lightnode {' '.join(command)}")
    missing = [option for option in options if option not in out]
    assert not missing, f"lightnode {' '.join(command)} --help does not name {missing}:\n{out}"


def _server_json(root: Path, settings: dict[str, object]) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "server.json").write_text(json.dumps(settings))


def test_server_json_applies_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    _server_json(tmp_path, {"listen": {"host": "0.0.0.0", "port": 8080}, "logging": {"level": "debug"},
                            "shutdown": {"grace_ms": 5}})  # fmt: skip
    from_file = settings_for(DaemonOptions(data_dir=tmp_path))
    assert (from_file.listen.host, from_file.listen.port, from_file.logging.level) == ("0.0.0.0", 8080, "debug")
    assert from_file.shutdown.grace_ms == 5
    flags = settings_for(DaemonOptions(data_dir=tmp_path, host="127.0.0.1", port=0, log_level="error"))
    assert (flags.listen.host, flags.listen.port, flags.logging.level) == ("127.0.0.1", 0, "error")
    assert flags.shutdown.grace_ms == 5  # what no flag names stays the file's


def test_init_of_a_file_says_it_is_not_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "afile"
    path.write_text("x")
    assert main(["init", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"lightnode: {path} is not a directory\n"
    assert path.read_text() == "x"


def test_init_takes_its_directory_as_dir_or_as_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every other command names its data directory with --data-dir: init accepts it too."""
    assert main(["init", "--data-dir", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "services").is_dir()
    capsys.readouterr()
    for argv in (["init"], ["init", str(tmp_path / "b"), "--data-dir", str(tmp_path / "c")]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            "lightnode: init: give the data directory once: `lightnode init DIR` or `--data-dir DIR`\n")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_an_empty_pidfile_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """"" would be the current directory (`--pidfile "$UNSET"`): refused before anything starts."""
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(data), "--pidfile", ""])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "argument --pidfile: must not be empty" in err and "Traceback" not in err
    assert not data.exists()


def test_an_empty_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--host ""` (`--host "$UNSET"`) would listen on every interface, IPv4 and IPv6, where the
    default is loopback only; server.json refuses an empty listen.host, and so does the flag."""
    for argv in (["serve", "--data-dir", "D", "--host", ""], ["dev", "SRC", "--host", " "]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and "argument --host: must not be empty" in err
    assert build_parser().parse_args(["serve", "--data-dir", "D", "--host", "0.0.0.0"]).host == "0.0.0.0"
