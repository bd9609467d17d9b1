"""Code envs given as a path (SPEC §7.2): what is not a usable interpreter is named as such."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightnode.services import codeenv
from lightnode.services.codeenv import CodeEnvError, interpreter_for


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_an_interpreter_path_to_python_2_is_refused_with_its_version(tmp_path: Path) -> None:
    # Was accepted as is: the pipeline then died at start and the endpoint said only
    # "the pipeline exited during initialization (exit code 1)".
    python2 = _script(tmp_path / "python2.7", "echo '[\"cpython\", [2, 7, 18], \"x86_64\"]'\n")
    with pytest.raises(CodeEnvError, match="Python 2.7.18; lightnode pipelines need Python 3.8"):
        interpreter_for(str(python2), tmp_path, tmp_path / "envs")


def test_an_interpreter_path_that_is_not_python_is_refused_with_what_it_said(tmp_path: Path) -> None:
    tool = _script(tmp_path / "tool", "echo 'tool: unknown option -c' >&2\nexit 2\n")
    with pytest.raises(CodeEnvError, match=r"code_env .*tool is not a usable Python 3.8\+ interpreter: tool: unknown option -c"):
        interpreter_for(str(tool), tmp_path, tmp_path / "envs")


def test_a_venv_whose_base_interpreter_is_gone_says_so(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "removed-python3.11")
    with pytest.raises(CodeEnvError, match=r"bin/python is a link to .*removed-python3.11, which does not exist"):
        interpreter_for(str(venv), tmp_path, tmp_path / "envs")


def test_a_real_venv_and_interpreter_still_resolve(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    assert interpreter_for(str(venv), tmp_path, tmp_path / "envs") == str(venv / "bin" / "python")
    assert interpreter_for("venv", tmp_path, tmp_path / "envs") == str(venv / "bin" / "python")
    assert interpreter_for(sys.executable, tmp_path, tmp_path / "envs") == sys.executable
    assert interpreter_for(None, tmp_path, tmp_path / "envs") == sys.executable
    # probed once per interpreter: a reload does not run it again
    assert (str(Path(sys.executable).resolve()), Path(sys.executable).resolve().stat().st_mtime_ns) in {
        (path, mtime) for path, mtime in codeenv._probe_cache
    }
