"""SPEC §7.2 / issue 6 requirements audit: code environments through imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightnode.services import codeenv
from tests.integration.test_code_envs import _requirements_src, lightnode, make_wheel

pytestmark = pytest.mark.integration


def test_a_second_import_with_the_same_requirements_does_not_rebuild(tmp_path: Path) -> None:
    """Issue 6, Done when: "requirements-built env reuse (second import does not rebuild)".
    Two generations deployed with the same requirements share one env, built once."""
    wheel = make_wheel(tmp_path)
    src = _requirements_src(tmp_path, f"--no-index\n{wheel}\n")
    data = tmp_path / "data"
    data.mkdir()
    first = lightnode("deploy", str(src), "--data-dir", str(data), "--generation", "g1")
    assert first.returncode == 0, first.stderr
    assert "building code env" in first.stderr and "tinypkg" in first.stderr
    (env,) = [p for p in (data / "code-envs").iterdir() if not p.name.startswith(".")]
    stamp = (env / codeenv.ENV_FILE).stat().st_mtime_ns

    (src / "tiny.py").write_text((src / "tiny.py").read_text() + "# an edit of the code, not of the requirements\n")
    second = lightnode("deploy", str(src), "--data-dir", str(data), "--generation", "g2")
    assert second.returncode == 0, second.stderr
    assert "building code env" not in second.stderr and "Installing" not in second.stderr, second.stderr
    assert [p for p in (data / "code-envs").iterdir() if not p.name.startswith(".")] == [env]
    assert (env / codeenv.ENV_FILE).stat().st_mtime_ns == stamp
    assert json.loads((env / codeenv.ENV_FILE).read_text())["hash"] == env.name
    assert sorted(p.name for p in (data / "services" / "reqs" / "generations").iterdir()) == ["g1", "g2"]


def _empty_requirements_src(root: Path, endpoint: str, code: str, python: str | None = None) -> Path:
    """SRC_DIR of service `reqs`: one endpoint with a requirements code env that installs
    nothing (a bare venv, built fast) and one test query."""
    src = root / "src"
    src.mkdir()
    (src / f"{endpoint}.py").write_text(code)
    (src / "requirements.txt").write_text("# nothing to install\n")
    code_env = {"requirements": "requirements.txt", **({"python": python} if python else {})}
    (src / "service.json").write_text(json.dumps({"id": "reqs", "endpoints": [{
        "id": endpoint, "type": "python-function", "code": f"{endpoint}.py",
        "code_env": code_env, "test_queries": [{"name": "q", "q": {}}]}]}))
    return src


def test_test_command_stopped_during_an_env_build_stops_the_build(tmp_path: Path) -> None:
    """SIGTERM (a cancelled CI job) while a requirements env builds: the build (venv, pip)
    is stopped with the run, nothing half-built is left. Was: the run waited for pip to
    finish, minutes for a large requirement, before exiting 143."""
    marker = tmp_path / "venv.pid"
    slow_python = tmp_path / "slowpython"
    slow_python.write_text(  # the interpreter, but `-m venv` hangs in a child that holds
        "#!/bin/sh\n"       # the output open (as pip's build backend would)
        f'case "$*" in *"-m venv"*) sleep 60 & echo $$ $! > {marker}; wait; exit 1;; esac\n'
        f'exec {sys.executable} "$@"\n')
    slow_python.chmod(0o755)
    src = _empty_requirements_src(tmp_path, "quote", "def quote():\n    return 1\n", python=str(slow_python))
    envs = tmp_path / "envs"
    proc = subprocess.Popen([sys.executable, "-m", "lightnode", "test", str(src), "--code-envs", str(envs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    builder = child = None
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and len(marker.read_text().split()) == 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the env build never started"
        builder, child = map(int, marker.read_text().split())
        stopped = time.monotonic()
        proc.terminate()
        out, err = proc.communicate(timeout=45)
        elapsed = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in (builder, child):
            if pid is not None and os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert elapsed < 20, f"the run went on for {elapsed:.0f} s after SIGTERM:\n{err}"
    assert "Traceback" not in err, err
    assert [p.name for p in envs.iterdir() if not p.name.endswith(".lock")] == []  # no staging left


def test_test_command_with_a_relative_code_envs_dir(tmp_path: Path) -> None:
    """`--code-envs envs` is relative to the working directory, as any path argument.
    Was: venv ran in the service root and made the env there, the rest looked for it in
    the working directory: the endpoint failed to load and SRC_DIR got an `envs/` dir."""
    src = _empty_requirements_src(tmp_path, "who", "import sys\ndef who():\n    return sys.prefix\n")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-m", "lightnode", "test", str(src), "--code-envs", "envs", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=work)
    assert done.returncode == 0, (done.stdout, done.stderr)
    (env,) = [p for p in (work / "envs").iterdir() if not p.name.startswith(".")]
    answer = json.loads(done.stdout)["endpoints"][0]["queries"][0]["answer"]
    assert answer["response"] == str(env)
    assert sorted(p.name for p in src.iterdir()) == ["requirements.txt", "service.json", "who.py"]
