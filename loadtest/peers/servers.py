"""The servers of the peer benchmark: what each one is and the command that starts it.

Every server has two processes' worth of Python doing the work (lightnode: two
pipelines per endpoint; the peers: two workers), except `uvicorn`, the
single-process reference. All bind 127.0.0.1. Peers serve
`loadtest.peers.apps`; lightnode serves `loadtest/services/bench` from a data
dir prepared by `prepare_lightnode` (deploy + tuning files, through the
`lightnode` command line as an operator would).

Command building is pure. Must not import `lightnode`.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtest import node

HOST = "127.0.0.1"
WORKERS = 2
BENCH_DIR = Path(__file__).resolve().parents[1] / "services" / "bench"
WSGI_APP = "loadtest.peers.apps:wsgi_app"
ASGI_APP = "loadtest.peers.apps:asgi_app"
# Two pipelines each for the measured endpoints; a queue deep enough for c=64.
PIPELINES = 2
QUEUE = 256
# Calls the floor keeps in each pipe: as many as lightnode holds in a fast endpoint's
# pipeline, the running call and up to 7 prefetched (lightnode.pool.machine.MAX_STAGED;
# tests/loadtest/test_peers.py keeps the two equal, as this module must not import lightnode).
FLOOR_DEPTH = 8
QUEUE_TIMEOUT_MS = 10_000
MEASURED_ENDPOINTS = ("add", "spin")
PEER_PACKAGES = ("gunicorn", "uvicorn", "granian")
# Pinned: the versions the published numbers were taken with (uvicorn.workers is
# deprecated upstream in favour of the uvicorn-worker package, still present here).
PIP_LINE = "pip install gunicorn==27.0.1 uvicorn==0.54.0 granian==2.8.9"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    needs: tuple[str, ...]  # importable packages the command needs

    @property
    def is_lightnode(self) -> bool:
        return self.name == "lightnode"


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("lightnode", f"lightnode, {PIPELINES} pipelines per endpoint", ()),
    ServerSpec("gunicorn-sync", f"gunicorn sync -w {WORKERS}, plain WSGI app", ("gunicorn",)),
    ServerSpec(
        "gunicorn-uvicorn",
        f"gunicorn -w {WORKERS} -k uvicorn.workers.UvicornWorker, raw ASGI app",
        ("gunicorn", "uvicorn", "uvloop", "httptools"),
    ),
    ServerSpec("granian-wsgi", f"granian --interface wsgi --workers {WORKERS}", ("granian",)),
    ServerSpec("granian-asgi", f"granian --interface asgi --workers {WORKERS}", ("granian",)),
    ServerSpec("uvicorn", "uvicorn, 1 process, raw ASGI app", ("uvicorn", "uvloop", "httptools")),
)
SERVER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SERVERS)
# Run only when named with --only: a reference, not a peer.
EXTRA_SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        "floor",
        f"lightnode's architecture without its features (loadtest/peers/floor.py), "
        f"{PIPELINES} pipelines per endpoint, up to {FLOOR_DEPTH} calls in each pipe",
        ("uvloop", "httptools"),
    ),
)
EXTRA_NAMES: tuple[str, ...] = tuple(spec.name for spec in EXTRA_SERVERS)


def spec_named(name: str) -> ServerSpec:
    for spec in SERVERS + EXTRA_SERVERS:
        if spec.name == name:
            return spec
    known = ", ".join(SERVER_NAMES + EXTRA_NAMES)
    raise KeyError(f"unknown server {name!r} (known: {known})")


def select(names: str | None) -> tuple[ServerSpec, ...]:
    """`--only a,b` -> those specs in the canonical order; None -> all but the extras.

    Raises:
        KeyError: an unknown name.
    """
    if not names:
        return SERVERS
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    for name in wanted:
        spec_named(name)
    return tuple(spec for spec in SERVERS + EXTRA_SERVERS if spec.name in wanted)


def missing_packages(specs: tuple[ServerSpec, ...]) -> list[str]:
    needed = sorted({package for spec in specs for package in spec.needs})
    return [package for package in needed if importlib.util.find_spec(package) is None]


def server_command(
    name: str, port: int, *, data_dir: Path | None = None, python: str = sys.executable
) -> list[str]:
    """The argv that starts server `name` on 127.0.0.1:`port` in the foreground.

    Raises:
        KeyError: an unknown name. ValueError: lightnode without `data_dir`.
    """
    bind = f"{HOST}:{port}"
    gunicorn = [python, "-m", "gunicorn", "--bind", bind, "--workers", str(WORKERS)]
    gunicorn += ["--graceful-timeout", "5", "--log-level", "warning"]
    granian = [python, "-m", "granian", "--host", HOST, "--port", str(port)]
    granian += ["--workers", str(WORKERS), "--no-ws", "--log-level", "warning"]
    if name == "lightnode":
        if data_dir is None:
            raise ValueError("lightnode needs a data dir")
        return [python, "-m", "lightnode", "--data-dir", str(data_dir), "--host", HOST,
                "--port", str(port)]  # fmt: skip
    if name == "gunicorn-sync":
        return [*gunicorn, "--worker-class", "sync", WSGI_APP]
    if name == "gunicorn-uvicorn":
        return [*gunicorn, "--worker-class", "uvicorn.workers.UvicornWorker", ASGI_APP]
    if name == "granian-wsgi":
        return [*granian, "--interface", "wsgi", WSGI_APP]
    if name == "granian-asgi":
        return [*granian, "--interface", "asgi", ASGI_APP]
    if name == "floor":
        return [python, "-m", "loadtest.peers.floor", "--host", HOST, "--port", str(port),
                "--pipelines", str(PIPELINES), "--depth", str(FLOOR_DEPTH)]  # fmt: skip
    if name == "uvicorn":
        return [python, "-m", "uvicorn", ASGI_APP, "--host", HOST, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning"]  # fmt: skip
    raise KeyError(f"unknown server {name!r}")


def lightnode_tuning(endpoint_id: str) -> dict[str, dict[str, int]]:
    """The measured endpoints get a fixed pool of 2; the others start none."""
    if endpoint_id in MEASURED_ENDPOINTS:
        size = PIPELINES
        return {"pool": {"floor": size, "cruise": size, "ceil": size, "queue": QUEUE,
                         "timeout": QUEUE_TIMEOUT_MS}}  # fmt: skip
    return {"pool": {"floor": 0, "cruise": 0, "ceil": 1}}


def prepare_lightnode(data_dir: Path, service_dir: Path = BENCH_DIR) -> str:
    """Deploy the bench service into `data_dir` and write its tuning; return the service id.

    Raises:
        loadtest.node.NodeError: deploy failed.
    """
    node.deploy(service_dir, data_dir)
    service_id = node.read_service_id(service_dir)
    for endpoint_id in ("add", "spin", "sleep"):
        node.write_tuning(data_dir, service_id, endpoint_id, lightnode_tuning(endpoint_id))
    return service_id
