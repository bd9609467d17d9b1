"""services.codeenv without building anything: resolution, hashing, pip error messages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lightnode.services import codeenv
from lightnode.services.codeenv import CodeEnvError, PythonInfo

PY312 = PythonInfo("/usr/bin/python3.12", "cpython", (3, 12, 1), "x86_64")
PY311 = PythonInfo("/usr/bin/python3.11", "cpython", (3, 11, 7), "x86_64")


def test_null_code_env_is_the_nodes_interpreter(tmp_path: Path) -> None:
    assert codeenv.interpreter_for(None, tmp_path, tmp_path / "envs") == sys.executable


def test_a_venv_dir_means_its_bin_python_unresolved(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    assert codeenv.interpreter_for("venv", tmp_path, tmp_path / "envs") == str(venv / "bin" / "python")
    assert codeenv.interpreter_for(str(venv), Path("/elsewhere"), tmp_path) == str(venv / "bin" / "python")


def test_an_interpreter_path(tmp_path: Path) -> None:
    assert codeenv.interpreter_for(sys.executable, tmp_path, tmp_path) == sys.executable


@pytest.mark.parametrize("value,fragment", [
    ("missing/python", "interpreter not found"),
    ("notavenv", r"is not a venv \(no bin/python\)"),
    ("script.txt", "not executable"),
])
def test_bad_paths_are_explained(tmp_path: Path, value: str, fragment: str) -> None:
    (tmp_path / "notavenv").mkdir()
    (tmp_path / "script.txt").write_text("x")
    with pytest.raises(CodeEnvError, match=fragment):
        codeenv.interpreter_for(value, tmp_path, tmp_path / "envs")


def test_a_command_name_as_code_env_says_a_path_is_wanted(tmp_path: Path) -> None:
    # "code_env": "python3" was only "interpreter not found: SRC_DIR/python3".
    with pytest.raises(CodeEnvError) as info:
        codeenv.interpreter_for("python3", tmp_path, tmp_path / "envs")
    assert str(info.value).startswith(f"code_env interpreter not found: {tmp_path / 'python3'} (a path relative")
    assert "not a command name" in str(info.value) and '"python": "python3"}' in str(info.value)


def test_hash_covers_python_version_and_requirements_bytes() -> None:
    base = codeenv.env_hash(PY312, b"numpy==2.0\n")
    assert base == codeenv.env_hash(PY312, b"numpy==2.0\n")
    assert len(base) == codeenv.HASH_CHARS
    assert base != codeenv.env_hash(PY311, b"numpy==2.0\n")
    assert base != codeenv.env_hash(PY312, b"numpy==2.1\n")
    # the interpreter's path is not part of it: two paths to one version share envs
    assert base == codeenv.env_hash(PythonInfo("/other/python", "cpython", (3, 12, 1), "x86_64"), b"numpy==2.0\n")


def test_requirements_env_not_built_says_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codeenv, "probe_python", lambda python: PY312)
    (tmp_path / "requirements.txt").write_text("tinypkg\n")
    spec = {"requirements": "requirements.txt"}
    with pytest.raises(CodeEnvError, match="is not built: run `lightnode admin build-env"):
        codeenv.interpreter_for(spec, tmp_path, tmp_path / "envs")
    plan = codeenv.plan_env(spec, tmp_path, tmp_path / "envs")
    assert plan.path == tmp_path / "envs" / codeenv.env_hash(PY312, b"tinypkg\n")
    # a complete env (bin/python + lightnode-env.json) is used; a half one is not
    (plan.path / "bin").mkdir(parents=True)
    os.symlink(sys.executable, plan.path / "bin" / "python")
    with pytest.raises(CodeEnvError):
        codeenv.interpreter_for(spec, tmp_path, tmp_path / "envs")
    (plan.path / codeenv.ENV_FILE).write_text("{}")
    assert codeenv.interpreter_for(spec, tmp_path, tmp_path / "envs") == str(plan.path / "bin" / "python")


def test_find_python(tmp_path: Path) -> None:
    assert codeenv.find_python(None, tmp_path) == sys.executable
    assert codeenv.find_python(sys.executable, tmp_path) == sys.executable
    assert codeenv.find_python("sh", tmp_path).endswith("/sh")
    with pytest.raises(CodeEnvError, match="command not found"):
        codeenv.find_python("no-such-python-3.99", tmp_path)
    with pytest.raises(CodeEnvError, match="no interpreter at"):
        codeenv.find_python("./bin/python", tmp_path)


@pytest.mark.parametrize("text,expected", [
    (b"", False), (b"\n# only a comment\n\n", False), (b"numpy\n", True), (b"--no-index\n./pkg\n", True),
])
def test_has_requirements(text: bytes, expected: bool) -> None:
    assert codeenv._has_requirements(text) is expected


def test_pip_failure_names_the_requirement() -> None:
    output = [
        "Looking in links: /opt/wheels\n",
        "ERROR: Could not find a version that satisfies the requirement nonexistent-pkg==1.0 (from versions: none)\n",
        "ERROR: No matching distribution found for nonexistent-pkg==1.0\n",
    ]
    message = codeenv.pip_failure_message(output, 1, Path("/svc/requirements.txt"), "service s endpoint e")
    first = message.splitlines()[0]
    assert first == ("pip could not install requirement 'nonexistent-pkg==1.0' for service s endpoint e "
                     "(from /svc/requirements.txt):")
    assert "No matching distribution found" in message
    assert "Looking in links" not in message


def test_pip_failure_without_a_known_message_keeps_the_last_lines() -> None:
    message = codeenv.pip_failure_message(["something odd\n"], 2, Path("/r.txt"), "")
    assert message.startswith("pip failed with exit code 2 installing /r.txt:")
    assert "something odd" in message


def test_relocate_scripts_rewrites_the_staging_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / ".build-x" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "tool"
    script.write_text(f"#!{tmp_path}/.build-x/bin/python\nprint(1)\n")
    script.chmod(0o755)
    (bin_dir.parent / "pyvenv.cfg").write_text(f"command = python -m venv {tmp_path}/.build-x\n")
    codeenv._relocate_scripts(bin_dir, str(tmp_path / ".build-x"), str(tmp_path / "final"))
    assert script.read_text().startswith(f"#!{tmp_path}/final/bin/python")
    assert os.access(script, os.X_OK)
    assert str(tmp_path / "final") in (bin_dir.parent / "pyvenv.cfg").read_text()


def test_a_build_that_cannot_write_says_where_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or a permission is a CodeEnvError naming the directory (the import or
    `lightnode test` reports it as an env that cannot be built), not a bare OSError."""
    monkeypatch.setattr(codeenv, "probe_python", lambda python: PY312)
    (tmp_path / "requirements.txt").write_text("tinypkg\n")
    plan = codeenv.plan_env({"requirements": "requirements.txt"}, tmp_path, tmp_path / "envs")

    def no_space(path: Path) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(codeenv, "_lock", no_space)
    with pytest.raises(CodeEnvError, match=rf"cannot build code env {plan.hash} in {tmp_path / 'envs'}: "
                                           r"No space left on device \(.*\.lock\)"):
        codeenv.build_env(plan)
    blocker = tmp_path / "file"
    blocker.write_text("")
    plan = codeenv.plan_env({"requirements": "requirements.txt"}, tmp_path, blocker / "envs")
    with pytest.raises(CodeEnvError, match=f"cannot create the code envs directory {blocker / 'envs'}: Not a directory"):
        codeenv.build_env(plan)


def test_output_lines_joins_chunks_and_ends_at_once_on_a_stop() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"Collecting tiny\nInstall")
        os.write(write_end, "ing \u00e9\n".encode() + b"no newline at the end")
        os.close(write_end)
        write_end = -1
        assert list(codeenv._output_lines(read_end, None)) == [
            "Collecting tiny\n", "Installing \u00e9\n", "no newline at the end\n"]
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    # the pipe still open (a child of pip holds it): a stop ends the reading anyway
    read_end, write_end = os.pipe()
    try:
        stop = codeenv.BuildStop()
        stop.stop()
        assert list(codeenv._output_lines(read_end, stop)) == []
        with pytest.raises(CodeEnvError, match="the code env build was stopped"):
            stop.check()
    finally:
        os.close(read_end)
        os.close(write_end)
