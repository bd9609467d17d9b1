"""SPEC §7.2 code environments with the real daemon: venvs, interpreters, requirements envs."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from lightnode.services import codeenv
from lightnode.services.codeenv import CodeEnvError
from tests.conftest import until, write_service

pytestmark = pytest.mark.integration

WHOAMI = (
    "import sys\n"
    "def whoami():\n"
    "    return {'executable': sys.executable, 'version': list(sys.version_info[:2]), 'prefix': sys.prefix}\n"
)
USES_TINY = (
    "import sys, tinypkg\n"
    "def tiny():\n"
    "    return {'value': tinypkg.VALUE, 'executable': sys.executable}\n"
)


def _other_python() -> str | None:
    """A CPython 3.8+ other than the one running the tests, to prove the venv is used."""
    candidates = [Path("/root/.pyenv/versions/3.12.1/bin/python3")]
    candidates += [Path(p) for p in (shutil.which(f"python3.{m}") for m in (12, 13, 10, 9, 8)) if p]
    for path in candidates:
        if path.exists():
            try:
                info = codeenv.probe_python(str(path))
            except CodeEnvError:
                continue
            if info.version[:2] != tuple(sys.version_info[:2]):
                return str(path)
    return None


OTHER_PYTHON = _other_python()


def make_wheel(directory: Path, name: str = "tinypkg", version: str = "1.0", source: str = "VALUE = 'tiny'\n") -> Path:
    """A minimal pure-Python wheel, so that pip installs it with --no-index (no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lightnode-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def lightnode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lightnode", *args], capture_output=True, text=True, timeout=timeout)


def test_probe_refuses_interpreters_older_than_3_8(tmp_path: Path) -> None:
    fake = tmp_path / "python2"
    fake.write_text('#!/bin/sh\necho \'["cpython", [2, 7, 18], "x86_64"]\'\n')
    fake.chmod(0o755)
    with pytest.raises(CodeEnvError, match="Python 2.7.18; lightnode pipelines need Python 3.8"):
        codeenv.probe_python(str(fake))
    broken = tmp_path / "notpython"
    broken.write_text("#!/bin/sh\necho oops >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(CodeEnvError, match="not a usable Python.*oops"):
        codeenv.probe_python(str(broken))


def test_probe_of_this_interpreter() -> None:
    info = codeenv.probe_python(sys.executable)
    assert info.version == tuple(sys.version_info[:3])
    assert info.ident.startswith("cpython-")


@pytest.mark.skipif(OTHER_PYTHON is None, reason="no second CPython 3.8+ on this machine")
def test_endpoints_run_in_a_venv_dir_and_under_an_interpreter_path(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    assert OTHER_PYTHON is not None
    venv = tmp_path / "venv"
    subprocess.run([OTHER_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    other_version = list(codeenv.probe_python(OTHER_PYTHON).version[:2])
    data = tmp_path / "data"
    gen = write_service(data, "envs", {"invenv": WHOAMI, "interp": WHOAMI, "local": WHOAMI, "missing": WHOAMI},
                        endpoint_extra={"invenv": {"code_env": str(venv)},
                                        "interp": {"code_env": OTHER_PYTHON},
                                        "local": {"code_env": "localvenv"},
                                        "missing": {"code_env": "/nonexistent/python"}})
    (gen / "localvenv").symlink_to(venv)  # a relative venv path resolves against the service root
    node = node_factory(data)

    status, body = node.run("envs", "invenv")
    assert status == 200, body
    assert body["response"]["executable"] == str(venv / "bin" / "python")
    assert body["response"]["prefix"] == str(venv)
    assert body["response"]["version"] == other_version != list(sys.version_info[:2])

    status, body = node.run("envs", "interp")
    assert status == 200, body
    assert body["response"]["version"] == other_version

    status, body = node.run("envs", "local")
    assert status == 200, body
    assert body["response"]["executable"] == str(gen / "localvenv" / "bin" / "python")

    status, body = node.run("envs", "missing")
    assert status == 503 and body["errorType"] == "EndpointUnavailable"
    assert "code_env interpreter not found: /nonexistent/python" in body["message"]


def _service_with_requirements(data: Path, generation: str, requirements: str, python: str) -> Path:
    gen = write_service(data, "reqs", {"tiny": USES_TINY}, generation=generation,
                        endpoint_extra={"tiny": {"code_env": {"requirements": "requirements.txt", "python": python}}})
    (gen / "requirements.txt").write_text(requirements)
    return gen


def test_requirements_env_is_built_once_reused_and_served(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path)
    requirements = f"--no-index\n{wheel}\n"
    python = OTHER_PYTHON or sys.executable
    data = tmp_path / "data"
    _service_with_requirements(data, "v1", requirements, python)

    # not built yet: the endpoint says how to build it
    node = node_factory(data)
    status, body = node.run("reqs", "tiny")
    assert status == 503 and body["errorType"] == "EndpointUnavailable"
    assert "run `lightnode admin build-env reqs v1 --data-dir DIR`" in body["message"]
    assert str(data) not in body["message"]  # no server path to public clients
    node.stop()

    first = lightnode("admin", "build-env", "reqs", "v1", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert "built in" in first.stdout
    assert "tinypkg" in first.stderr  # pip's own output, as it happens
    envs = [p for p in (data / "code-envs").iterdir() if not p.name.startswith(".")]
    assert len(envs) == 1
    env = envs[0]
    stamp = (env / codeenv.ENV_FILE).stat().st_mtime_ns
    assert json.loads((env / codeenv.ENV_FILE).read_text())["requirements"] == requirements
    assert not list((data / "code-envs").glob(".build-*"))

    # a second generation with the same requirements (default: the newest) reuses it
    _service_with_requirements(data, "v2", requirements, python)
    second = lightnode("admin", "build-env", "reqs", "--data-dir", str(data))
    assert second.returncode == 0, second.stderr
    assert "reqs v2 tiny" in second.stdout and "already built, reused" in second.stdout
    assert "Processing" not in second.stderr and "Installing" not in second.stderr
    assert (env / codeenv.ENV_FILE).stat().st_mtime_ns == stamp
    assert [p for p in (data / "code-envs").iterdir() if not p.name.startswith(".")] == [env]
    builds = codeenv.build_env_for_generation(data, "reqs", "v1", progress=None)
    assert [(b.hash, b.built, b.endpoints) for b in builds] == [(env.name, False, ("tiny",))]

    node = node_factory(data)
    status, body = node.run("reqs", "tiny")
    assert status == 200, body
    assert body["response"] == {"value": "tiny", "executable": str(env / "bin" / "python")}
    assert body["apiContext"]["serviceGeneration"] == "v2"


def test_an_env_built_while_the_node_runs_lets_its_endpoint_start(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    """The 503 of an endpoint whose env is not built says to run `admin build-env`: doing
    so makes it serve, without a restart of the node (nor a SIGHUP). Through the admin
    API (`--url`, SPEC §8) here; test_requirements_env_is_built_once_reused_and_served
    builds with --data-dir."""
    data = tmp_path / "data"
    _service_with_requirements(data, "v1", f"--no-index\n{make_wheel(tmp_path)}\n", sys.executable)
    node = node_factory(data)
    status, body = node.run("reqs", "tiny")
    assert status == 503 and "lightnode admin build-env" in body["message"]
    unknown = lightnode("admin", "build-env", "nope", "--url", node.url)
    assert unknown.returncode == 1 and "HTTP 404: service nope has no generation" in unknown.stderr
    built = lightnode("admin", "build-env", "reqs", "--url", node.url)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("reqs v1 tiny: code env ") and " built in " in built.stdout
    status, body = until(lambda: (lambda answer: answer if answer[0] == 200 else None)(node.run("reqs", "tiny")),
                         timeout_s=20, what="the endpoint serving once its env is built")
    assert body["response"]["value"] == "tiny"
    assert body["response"]["executable"].startswith(str(data / "code-envs"))
    assert "reqs/tiny: starting, its code env is built now" in node.log()


def test_a_switch_refused_for_an_env_not_built_goes_ahead_once_the_env_is_built(
    tmp_path: Path, node_factory  # type: ignore[no-untyped-def]
) -> None:
    """The refusal names `admin build-env`; running it is enough: the node tries the
    switch again when the env appears (it used to wait for a new write or a SIGHUP)."""
    data = tmp_path / "data"
    write_service(data, "reqs", {"tiny": "def tiny():\n    return {'value': 'v1'}\n"})
    node = node_factory(data)
    assert node.run("reqs", "tiny")[1]["response"] == {"value": "v1"}
    staged = _service_with_requirements(tmp_path / "staging", "v2", f"--no-index\n{make_wheel(tmp_path)}\n",
                                        sys.executable)
    staged.rename(data / "services" / "reqs" / "generations" / "v2")  # the generation whole, at once

    refused = lightnode("admin", "switch", "reqs", "v2", "--url", node.url)
    assert refused.returncode == 1 and "is not built" in refused.stderr, refused.stderr
    assert node.run("reqs", "tiny")[1]["response"] == {"value": "v1"}  # v1 stays in service
    assert node.stats("reqs")["switchError"]

    built = lightnode("admin", "build-env", "reqs", "v2", "--url", node.url)
    assert built.returncode == 0, built.stderr
    until(lambda: node.run("reqs", "tiny")[1].get("response", {}).get("value") == "tiny",
          timeout_s=30, what="the switch to v2 once its env is built")
    assert node.stats("reqs")["switchError"] is None
    assert "a code env was built: the refused switch is tried again" in node.log()


def test_a_requirement_pip_cannot_install_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _service_with_requirements(data, "v1", "--no-index\nnonexistent-pkg-for-lightnode==1.0\n", sys.executable)
    done = lightnode("admin", "build-env", "reqs", "v1", "--data-dir", str(data))
    assert done.returncode == 1
    assert "pip could not install requirement 'nonexistent-pkg-for-lightnode==1.0'" in done.stderr
    assert "service reqs endpoint tiny" in done.stderr
    assert [p.name for p in (data / "code-envs").iterdir() if not p.name.endswith(".lock")] == []


def test_an_empty_requirements_file_builds_a_bare_venv_fast(tmp_path: Path) -> None:
    gen = tmp_path / "svc"
    gen.mkdir()
    (gen / "requirements.txt").write_text("# nothing yet\n")
    plan = codeenv.plan_env({"requirements": "requirements.txt"}, gen, tmp_path / "envs")
    outcome = codeenv.build_env(plan, progress=None)
    assert outcome.built and codeenv.is_built(plan.path)
    probe = subprocess.run([str(outcome.interpreter), "-c", "import sys; print(sys.prefix)"],
                           capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == str(plan.path)  # a venv that works at its final path
    assert "build-" not in (plan.path / "bin" / "activate").read_text()
    again = codeenv.build_env(plan, progress=None)
    assert not again.built and again.path == outcome.path


def test_dev_test_command_builds_and_reuses_requirements_envs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "who.py").write_text(WHOAMI)
    (src / "requirements.txt").write_text("# nothing to install: a bare venv, no pip run\n")
    (src / "service.json").write_text(json.dumps({"id": "reqs", "endpoints": [{
        "id": "who", "type": "python-function", "code": "who.py",
        "code_env": {"requirements": "requirements.txt"}, "test_queries": [{"name": "q", "q": {}}]}]}))
    envs = tmp_path / "envs"
    first = lightnode("test", str(src), "--code-envs", str(envs), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "built in" in first.stderr
    (env,) = [p for p in envs.iterdir() if not p.name.startswith(".")]
    answer = json.loads(first.stdout)["endpoints"][0]["queries"][0]["answer"]
    assert answer["response"]["executable"] == str(env / "bin" / "python")
    second = lightnode("test", str(src), "--code-envs", str(envs))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "building code env" not in second.stderr


@pytest.mark.slow
def test_without_a_recent_pip_in_the_node_the_env_bootstraps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codeenv, "_node_pip_version", lambda: None)
    wheel = make_wheel(tmp_path)
    (tmp_path / "requirements.txt").write_text(f"--no-index\n{wheel}\n")
    plan = codeenv.plan_env({"requirements": "requirements.txt"}, tmp_path, tmp_path / "envs")
    outcome = codeenv.build_env(plan, progress=None)
    probe = subprocess.run([str(outcome.interpreter), "-c", "import tinypkg, pip; print(tinypkg.VALUE)"],
                           capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "tiny", probe.stderr


def test_an_interpreter_that_is_not_python_3_is_named_per_endpoint(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    # Was: "the pipeline exited during initialization (exit code 1)", the reason in the log only.
    python2 = tmp_path / "python2.7"
    python2.write_text("#!/bin/sh\necho '[\"cpython\", [2, 7, 18], \"x86_64\"]'\n")
    python2.chmod(0o755)
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho 'tool: no such option' >&2\nexit 2\n")
    tool.chmod(0o755)
    data = tmp_path / "data"
    # One failing endpoint per service: the registry keeps one load error per generation.
    write_service(data, "envs", {"old": WHOAMI, "fine": WHOAMI}, endpoint_extra={"old": {"code_env": str(python2)}})
    write_service(data, "tools", {"tool": WHOAMI}, endpoint_extra={"tool": {"code_env": str(tool)}})
    node = node_factory(data)
    status, body = node.run("envs", "old")
    assert status == 503 and body["errorType"] == "EndpointUnavailable", body
    assert "is Python 2.7.18; lightnode pipelines need Python 3.8 or newer" in body["message"]
    status, body = node.run("tools", "tool")
    assert status == 503 and body["errorType"] == "EndpointUnavailable", body
    assert "is not a usable Python 3.8+ interpreter: tool: no such option" in body["message"]
    status, body = node.run("envs", "fine")  # nothing else is affected
    assert status == 200, body


def _requirements_src(root: Path, requirements: str) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "tiny.py").write_text(USES_TINY)
    (src / "requirements.txt").write_text(requirements)
    (src / "service.json").write_text(json.dumps({"id": "reqs", "endpoints": [{
        "id": "tiny", "type": "python-function", "code": "tiny.py",
        "code_env": {"requirements": "requirements.txt"}}]}))
    return src


@pytest.mark.parametrize("through", ["--data-dir", "--url"])
def test_deploy_builds_the_requirements_env_so_the_service_serves_at_once(
    tmp_path: Path, node_factory, through: str  # type: ignore[no-untyped-def]
) -> None:
    # SPEC §7.2: import builds the env by default. It did not: `deploy` said "deployed",
    # exit 0, and every request then got 503 "code env ... is not built".
    wheel = make_wheel(tmp_path)
    src = _requirements_src(tmp_path, f"--no-index\n{wheel}\n")
    node = node_factory(tmp_path / "data")
    where = str(tmp_path / "data") if through == "--data-dir" else node.url
    done = lightnode("deploy", str(src), through, where, "--generation", "g1")
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while True:
        status, body = node.run("reqs", "tiny")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, body
    assert body["response"]["value"] == "tiny"
    assert body["response"]["executable"].startswith(str(tmp_path / "data" / "code-envs"))


def test_an_import_whose_env_cannot_be_built_is_refused_whole(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    node = node_factory(data)
    before = sorted(p.name for p in (data / "services").iterdir())
    src = _requirements_src(tmp_path, "--no-index\nnonexistent-pkg-for-lightnode==1.0\n")
    done = lightnode("deploy", str(src), "--data-dir", str(data), "--generation", "g1")
    assert done.returncode == 1
    assert "pip could not install requirement 'nonexistent-pkg-for-lightnode==1.0'" in done.stderr
    assert "the generation was not imported" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (data / "services").iterdir()) == before  # no service, no staging
    assert [p.name for p in (data / "code-envs").iterdir() if not p.name.endswith(".lock")] == []
    deadline = time.monotonic() + 20  # the node may have seen the service for a moment
    while (answer := node.run("reqs", "tiny"))[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer[0] == 404, answer
    # fixed, the same generation id deploys
    wheel = make_wheel(tmp_path)
    (src / "requirements.txt").write_text(f"--no-index\n{wheel}\n")
    again = lightnode("deploy", str(src), "--data-dir", str(data), "--generation", "g1")
    assert again.returncode == 0, again.stderr
