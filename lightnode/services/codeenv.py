"""Code environments (SPEC §7.2): which interpreter runs an endpoint's pipelines.

An endpoint's `code_env` is one of:
- null: the node's own interpreter;
- a path (relative to the service root, or absolute) to a Python interpreter or
  to a venv directory (its `bin/python` is used);
- `{"requirements": "requirements.txt", "python": "python3.11"}`: a venv built
  with `python -m venv` + pip into `DATA_DIR/code-envs/<hash>/`, where the hash
  covers the interpreter's implementation, version and machine plus the bytes of
  the requirements file. Every generation (of any service) whose requirements
  hash the same reuses that env; a second build of the same hash is a no-op.

A build happens in `code-envs/.build-<hash>-<pid>/` and is renamed into place
only when complete (the last step writes `lightnode-env.json`), under a lock
file per hash, so the node never sees a half-built env and two builders never
build the same env twice. pip runs with the service root as its working
directory, so relative paths in requirements.txt are relative to the service.

The node never builds at load time: an env that is not built makes its
endpoint unavailable with a message that says how to build it
(`lightnode admin build-env`, or the import that builds by default); a node
running on the data directory starts it once the env appears (its config
watcher lists `code-envs/`). The `build-env` command itself is the admin
layer's (ServiceLayer.build_envs), so that it also works through `--url`.

Imports: standard library, `lightnode.services.model`/`store`. Never the scheduler, HTTP or worker layers.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from lightnode.services.model import ServiceDef, load_service_dir
from lightnode.services.store import DataDir

ENV_FILE = "lightnode-env.json"  # written last: an env without it is not complete
HASH_CHARS = 16  # 64 bits of sha256: collisions are not a practical concern here
MIN_PYTHON = (3, 8)  # the worker runtime's oldest supported interpreter
PROBE_TIMEOUT_S = 30.0
# pip >= 22.3 can install into another interpreter (`pip --python`), which spares
# each env the several seconds that bootstrapping its own pip (ensurepip) costs.
PIP_PYTHON_OPTION = (22, 3)
PIP_TAIL_LINES = 60  # pip output kept for the error message when it fails
STOP_POLL_S = 0.2  # how soon a stopped build stops reading pip's output

_PROBE = (
    "import json, platform, sys\n"
    "print(json.dumps([platform.python_implementation().lower(),"
    " list(sys.version_info[:3]), platform.machine()]))\n"
)


class CodeEnvError(Exception):
    """A code env cannot be found, probed or built; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PythonInfo:
    """What a code env's hash covers about its base interpreter."""

    path: str
    implementation: str
    version: tuple[int, int, int]
    machine: str

    @property
    def ident(self) -> str:
        return f"{self.implementation}-{'.'.join(map(str, self.version))}-{self.machine}"


@dataclass(frozen=True, slots=True)
class EnvPlan:
    """A requirements code env: where it lives and what it is built from."""

    hash: str
    path: Path  # code-envs/<hash>
    python: PythonInfo
    requirements_path: Path
    requirements: bytes
    root: Path  # the service root: pip's working directory

    @property
    def interpreter(self) -> Path:
        return self.path / "bin" / "python"


@dataclass(frozen=True, slots=True)
class EnvBuild:
    """The outcome of one build request: `built` is False when the env was reused."""

    hash: str
    path: Path
    interpreter: Path
    python: str  # base interpreter ident, e.g. cpython-3.12.1-x86_64
    built: bool
    seconds: float
    endpoints: tuple[str, ...] = ()


# ---------------------------------------------------------------- interpreters


_probe_cache: dict[tuple[str, int], PythonInfo] = {}


def probe_python(python: str) -> PythonInfo:
    """Ask an interpreter for its implementation, version and machine (cached).

    Raises:
        CodeEnvError: it cannot be run, or is older than Python 3.8.
    """
    try:
        key = (os.path.realpath(python), os.stat(python).st_mtime_ns)
    except OSError as exc:
        raise CodeEnvError(f"python interpreter {python}: {exc.strerror}") from None
    if key in _probe_cache:
        return _probe_cache[key]
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CodeEnvError(f"cannot run python interpreter {python}: {exc}") from None
    try:
        implementation, version, machine = json.loads(out.stdout)
        info = PythonInfo(python, str(implementation), (version[0], version[1], version[2]), str(machine))
    except (ValueError, TypeError, IndexError):
        lines = [line.strip() for line in (out.stderr or out.stdout).splitlines() if line.strip()]
        detail = " / ".join(lines[:4]) or f"exit code {out.returncode}, no output"
        raise CodeEnvError(
            f"{python} is not a usable Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ interpreter: {detail}"
        ) from None
    if info.version[:2] < MIN_PYTHON:
        raise CodeEnvError(
            f"{python} is Python {'.'.join(map(str, info.version))}; "
            f"lightnode pipelines need Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer"
        )
    _probe_cache[key] = info
    return info


def find_python(python: str | None, root: Path) -> str:
    """The base interpreter named by a requirements code env's `"python"`.

    None is the node's interpreter; a value with a "/" is a path (relative to
    the service root); anything else is a command looked up on PATH.

    Raises:
        CodeEnvError: not found.
    """
    if python is None:
        return sys.executable
    if "/" in python:
        path = Path(python).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise CodeEnvError(f"code_env python {python!r}: no interpreter at {path}")
        return str(path)
    found = shutil.which(python)
    if found is None:
        raise CodeEnvError(f"code_env python {python!r}: command not found on PATH")
    return found


def interpreter_for(code_env: object, root: Path, code_envs_dir: Path, build_command: str | None = None) -> str:
    """The interpreter that runs an endpoint's pipelines (SPEC §7.2).

    Args:
        code_env: the endpoint's `code_env` value from service.json.
        root: the service (generation) root; relative paths resolve against it.
        code_envs_dir: `DATA_DIR/code-envs`.
        build_command: the command that builds the env, for the error when it is not built.

    Raises:
        CodeEnvError: the interpreter or venv does not exist, or the
            requirements env is not built yet.
    """
    if code_env is None:
        return sys.executable
    if isinstance(code_env, str):
        return _path_interpreter(code_env, root)
    if isinstance(code_env, dict):
        plan = plan_env(code_env, root, code_envs_dir)
        if is_built(plan.path):
            return str(plan.interpreter)
        raise CodeEnvError(
            f"code env {plan.hash} ({plan.python.ident}, {plan.requirements_path.name}) is not built: "
            f"run `{build_command or 'lightnode admin build-env SERVICE GENERATION --data-dir DIR'}`"
        )
    raise CodeEnvError(f"code_env must be null, a path or an object (got {type(code_env).__name__})")


def _path_interpreter(value: str, root: Path) -> str:
    """The interpreter of a path code env, probed once (cached) so that one that is not
    Python 3.8+ is named as such here, rather than as a pipeline that died at start."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    if path.is_dir():
        venv_python = path / "bin" / "python"
        if not venv_python.exists():
            if venv_python.is_symlink():  # its base interpreter was removed or upgraded away
                raise CodeEnvError(
                    f"code_env {value!r}: {venv_python} is a link to {os.readlink(venv_python)}, "
                    "which does not exist: rebuild the venv"
                )
            raise CodeEnvError(f"code_env {value!r}: {path} is not a venv (no bin/python)")
        _probe_path(value, venv_python)
        return str(venv_python)  # never resolved: the venv's own path makes it a venv
    if not path.exists():
        hint = ""
        if os.sep not in value and shutil.which(value):
            # "python3": a path is wanted, not a command name (as `"python"` of a
            # requirements env takes); PATH differs between a shell and a service.
            hint = (f" (a path relative to the service root or absolute is wanted, not a command"
                    f" name; write {json.dumps(shutil.which(value))}, or"
                    f' {{"requirements": "requirements.txt", "python": {json.dumps(value)}}} for a venv built with it)')
        raise CodeEnvError(f"code_env interpreter not found: {path}{hint}")
    if not os.access(path, os.X_OK):
        raise CodeEnvError(f"code_env interpreter is not executable: {path}")
    _probe_path(value, path)
    return str(path)


def _probe_path(value: str, python: Path) -> None:
    try:
        probe_python(str(python))
    except CodeEnvError as exc:
        raise CodeEnvError(f"code_env {value!r}: {exc}") from None


# --------------------------------------------------------------------- planning


def env_hash(python: PythonInfo, requirements: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(python.ident.encode() + b"\n")
    digest.update(requirements)
    return digest.hexdigest()[:HASH_CHARS]


def plan_env(code_env: dict[str, Any], root: Path, code_envs_dir: Path) -> EnvPlan:
    """Resolve a requirements code env to its hash and directory (runs the interpreter once).

    Raises:
        CodeEnvError: the requirements file or the interpreter is missing.
    """
    requirements_path = root / str(code_env.get("requirements"))
    try:
        requirements = requirements_path.read_bytes()
    except OSError as exc:
        raise CodeEnvError(f"code_env requirements {requirements_path}: {exc.strerror}") from None
    python = probe_python(find_python(code_env.get("python"), root))
    digest = env_hash(python, requirements)
    # Absolute: venv and pip run in the service root, the rest of the build in ours.
    env_dir = Path(os.path.abspath(code_envs_dir)) / digest
    return EnvPlan(digest, env_dir, python, requirements_path, requirements, root)


def is_built(env_dir: Path) -> bool:
    return (env_dir / ENV_FILE).is_file() and (env_dir / "bin" / "python").exists()


# --------------------------------------------------------------------- building


class BuildStop:
    """Stops a build under way from another thread (a `lightnode test` or `dev` run that
    is stopped): its venv or pip process is killed, and the build raises CodeEnvError
    (its staging directory removed, as for any failed build)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.requested = False

    def stop(self) -> None:
        with self._lock:
            self.requested = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def check(self) -> None:
        """Raises CodeEnvError if a stop was requested."""
        if self.requested:
            raise CodeEnvError("the code env build was stopped")

    def _running(self, proc: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self._proc = proc
            if proc is not None and self.requested:
                proc.kill()


def build_env(
    plan: EnvPlan, *, progress: TextIO | None = None, label: str = "", stop: BuildStop | None = None
) -> EnvBuild:
    """Build the env of `plan` unless it exists; concurrent callers build it once.

    Args:
        plan: from `plan_env`.
        progress: where venv and pip output goes as it happens (None: nowhere).
        label: who needs it (e.g. "service S endpoint E"), for messages.
        stop: lets another thread stop the build.

    Raises:
        CodeEnvError: stopped, venv or pip failed (the message names the requirement pip
            could not install when pip says which), or the code envs directory
            cannot be created or written.
    """
    started = time.monotonic()
    try:
        plan.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. dev/test's default ~/.cache under a read-only HOME
        raise CodeEnvError(f"cannot create the code envs directory {plan.path.parent}: "
                           f"{exc.strerror or exc}") from None
    try:
        built = _build_locked(plan, progress, label, stop)
    except OSError as exc:  # a full disk, a permission: said as such, not as a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        raise CodeEnvError(f"cannot build code env {plan.hash} in {plan.path.parent}: "
                           f"{exc.strerror or exc}{where}") from None
    outcome = _outcome(plan, built=built, started=started)
    if built:
        _emit(progress, f"code env {plan.hash} built in {outcome.seconds:.1f} s: {plan.path}")
    return outcome


def _build_locked(plan: EnvPlan, progress: TextIO | None, label: str, stop: BuildStop | None) -> bool:
    """Build the env under its lock unless it is built; True if this call built it."""
    with _lock(plan.path.parent / f".{plan.hash}.lock"):
        if is_built(plan.path):
            return False
        if stop is not None:
            stop.check()
        for stale in plan.path.parent.glob(f".build-{plan.hash}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a builder that died
        staging = plan.path.parent / f".build-{plan.hash}-{os.getpid()}"
        try:
            _emit(progress, f"building code env {plan.hash} ({plan.python.ident}) for {label or plan.root}")
            _run_logged([plan.python.path, "-m", "venv", "--without-pip", "--prompt",
                         f"lightnode-{plan.hash}", str(staging)],
                        cwd=plan.root, progress=progress, what="python -m venv", stop=stop)
            if _has_requirements(plan.requirements):
                _pip_install(plan, staging / "bin" / "python", progress, label, stop)
            _relocate_scripts(staging / "bin", str(staging), str(plan.path))
            _write_env_file(staging, plan)
            if os.path.lexists(plan.path):  # not built (checked above): debris, not an env
                _remove(plan.path)
            os.rename(staging, plan.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _outcome(plan: EnvPlan, *, built: bool, started: float) -> EnvBuild:
    return EnvBuild(plan.hash, plan.path, plan.interpreter, plan.python.ident, built,
                    round(time.monotonic() - started, 3))


class _lock:
    """An exclusive flock on a file, held for the `with` block (blocking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock


def _has_requirements(requirements: bytes) -> bool:
    """True when the file names anything to install (blank lines and comments do not)."""
    for line in requirements.decode("utf-8", "replace").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            return True
    return False


def _pip_command(venv_python: Path, progress: TextIO | None, stop: BuildStop | None) -> list[str]:
    version = _node_pip_version()
    if version is not None and version >= PIP_PYTHON_OPTION:
        return [sys.executable, "-m", "pip", "--python", str(venv_python)]
    _run_logged([str(venv_python), "-m", "ensurepip", "--default-pip"],
                cwd=venv_python.parent, progress=progress, what="ensurepip", stop=stop)
    return [str(venv_python), "-m", "pip"]


def _node_pip_version() -> tuple[int, ...] | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        text = version("pip")
    except PackageNotFoundError:
        return None
    parts = re.findall(r"\d+", text)[:2]
    return tuple(int(p) for p in parts) if parts else None


def _pip_install(
    plan: EnvPlan, venv_python: Path, progress: TextIO | None, label: str, stop: BuildStop | None
) -> None:
    command = _pip_command(venv_python, progress, stop) + [
        "install", "--disable-pip-version-check", "--no-input", "-r", str(plan.requirements_path),
    ]
    code, tail = _run_streamed(command, cwd=plan.root, progress=progress, stop=stop)
    if code != 0:
        raise CodeEnvError(pip_failure_message(tail, code, plan.requirements_path, label))


_REQUIREMENT_PATTERNS = (
    re.compile(r"satisfies the requirement (\S+)"),
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Invalid requirement: '([^']+)'"),
    re.compile(r"Failed (?:to build|building wheel for) (\S+)"),
    re.compile(r"Could not install packages? due to .*?: (.*)"),
    re.compile(r"(?:File|Directory) ['\"]?(\S+?)['\"]? (?:does not exist|is not installable)"),
)


def pip_failure_message(lines: Iterable[str], code: int, requirements_path: Path, label: str) -> str:
    """A clear message from pip's output: the requirement it could not install, and its errors."""
    lines = [line.rstrip() for line in lines]
    errors = [line for line in lines if line.startswith("ERROR:")] or lines[-10:]
    requirement = None
    for line in errors:
        for pattern in _REQUIREMENT_PATTERNS:
            match = pattern.search(line)
            if match:
                requirement = match.group(1).rstrip(".,")
                break
        if requirement:
            break
    where = f" for {label}" if label else ""
    head = (
        f"pip could not install requirement {requirement!r}{where} (from {requirements_path})"
        if requirement
        else f"pip failed with exit code {code}{where} installing {requirements_path}"
    )
    return head + ":\n" + "\n".join(f"  {line}" for line in errors)


def _run_streamed(
    command: list[str], *, cwd: Path, progress: TextIO | None, stop: BuildStop | None = None
) -> tuple[int, list[str]]:
    """Run, copying each output line to `progress`; return (exit code, last lines).

    Raises:
        CodeEnvError: it cannot be run, or `stop` stopped it.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    tail: collections.deque[str] = collections.deque(maxlen=PIP_TAIL_LINES)
    try:
        # In our process group, so that a CI runner's kill of the group reaches pip too.
        proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
    except OSError as exc:
        raise CodeEnvError(f"cannot run {command[0]}: {exc}") from None
    if stop is not None:
        stop._running(proc)
    try:
        with proc:
            assert proc.stdout is not None
            for line in _output_lines(proc.stdout.fileno(), stop):
                tail.append(line)
                if progress is not None:
                    progress.write(line)
                    progress.flush()
    finally:
        if stop is not None:
            stop._running(None)
    if stop is not None:
        stop.check()
    return proc.returncode, list(tail)


def _output_lines(fd: int, stop: BuildStop | None) -> Iterator[str]:
    """The lines read from `fd` until EOF, or until a stop: then at once, as a child
    of the killed pip (a build backend) may hold the pipe open until it ends."""
    pending = b""
    while stop is None or not stop.requested:
        ready, _, _ = select.select([fd], [], [], STOP_POLL_S)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace") + "\n"
    if pending:
        yield pending.decode("utf-8", "replace") + "\n"


def _run_logged(
    command: list[str], *, cwd: Path, progress: TextIO | None, what: str, stop: BuildStop | None = None
) -> None:
    code, tail = _run_streamed(command, cwd=cwd, progress=progress, stop=stop)
    if code != 0:
        detail = "".join(tail[-10:]).rstrip() or "no output"
        raise CodeEnvError(f"{what} failed with exit code {code}:\n{detail}")


def _relocate_scripts(bin_dir: Path, old: str, new: str) -> None:
    """Point the staging dir's scripts (shebangs, activate) at the env's final path."""
    for entry in bin_dir.iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        try:
            text = entry.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a binary
        if old in text:
            mode = entry.stat().st_mode
            entry.write_text(text.replace(old, new), encoding="utf-8")
            os.chmod(entry, mode)
    cfg = bin_dir.parent / "pyvenv.cfg"
    if cfg.is_file():
        cfg.write_text(cfg.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


def _write_env_file(env_dir: Path, plan: EnvPlan) -> None:
    info = {
        "hash": plan.hash,
        "python": plan.python.ident,
        "base_interpreter": plan.python.path,
        "requirements": plan.requirements.decode("utf-8", "replace"),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (env_dir / ENV_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _emit(progress: TextIO | None, message: str) -> None:
    if progress is not None:
        progress.write(message + "\n")
        progress.flush()


# ------------------------------------------------------------ services, generations


def build_envs_for_service(
    definition: ServiceDef, code_envs_dir: Path, *, progress: TextIO | None = None
) -> list[EnvBuild]:
    """Build every requirements code env a service needs (each distinct hash once).

    Raises:
        CodeEnvError: the first env that cannot be planned or built.
    """
    plans: dict[str, tuple[EnvPlan, list[str]]] = {}
    for endpoint in definition.endpoints:
        if isinstance(endpoint.code_env, dict):
            plan = plan_env(endpoint.code_env, definition.root, code_envs_dir)
            plans.setdefault(plan.hash, (plan, []))[1].append(endpoint.id)
    builds = []
    for plan, endpoints in plans.values():
        label = f"service {definition.id} endpoint{'s' if len(endpoints) > 1 else ''} {', '.join(endpoints)}"
        outcome = build_env(plan, progress=progress, label=label)
        builds.append(_with_endpoints(outcome, endpoints))
    return builds


def _with_endpoints(outcome: EnvBuild, endpoints: list[str]) -> EnvBuild:
    return EnvBuild(outcome.hash, outcome.path, outcome.interpreter, outcome.python,
                    outcome.built, outcome.seconds, tuple(endpoints))


def build_env_for_generation(
    data_dir: DataDir | Path, service_id: str, generation: str, *, progress: TextIO | None = sys.stderr
) -> list[EnvBuild]:
    """Build the code envs of one imported generation (`admin import` and `admin build-env`).

    Returns one EnvBuild per distinct env (`built` False when reused); an
    empty list when no endpoint has a requirements code env.

    Raises:
        IdError: invalid service or generation id.
        ConfigError: the generation's service.json is missing or invalid.
        CodeEnvError: an env cannot be built (the message names the requirement).
    """
    store = data_dir if isinstance(data_dir, DataDir) else DataDir(data_dir)
    root = store.generation_dir(service_id, generation)
    definition = load_service_dir(root)
    return build_envs_for_service(definition, store.code_envs_dir, progress=progress)
