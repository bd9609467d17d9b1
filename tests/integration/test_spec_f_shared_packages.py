"""Nodes serving one set of packages from read-only mounts (SPEC §12, config/kubernetes/).

SPEC §12 lets nodes get the same packages from "a read-only volume mounted as
services/"; the Kubernetes example mounts the claim of an importing writer twice
into each pod, read-only: its services/ and the code-envs/ its import built (a
node never builds a code env at load time, SPEC §7.2). Here a writer data
directory imports a service whose endpoint has a requirements code env, and two
nodes see the writer's services/ and code-envs/ through read-only bind mounts
(a private mount namespace per node when run as root, where file modes do not
stop writes; read-only modes otherwise). Both serve it, write nothing there, and
follow the writer's switch to a new generation live.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Node, until

pytestmark = pytest.mark.integration

SOURCE = "def which():\n    return {'generation': %r}\n"


def lightnode(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lightnode", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def publish(writer: Path, src: Path, generation: str) -> None:
    """What the Job of pvc-services.yaml runs: import (which builds the env), then switch."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "which.py").write_text(SOURCE % generation)
    (src / "requirements.txt").write_text("")  # an env with nothing to install: built offline
    (src / "service.json").write_text(json.dumps({
        "id": "shared", "auth": {"public": True},
        "endpoints": [{"id": "which", "type": "python-function", "code": "which.py", "function": "which",
                       "code_env": {"requirements": "requirements.txt"}}],
    }))
    archive = src.parent / f"{generation}.zip"
    lightnode("package", str(src), "-o", str(archive), "--generation", generation)
    lightnode("admin", "import", "shared", str(archive), "--data-dir", str(writer))
    lightnode("admin", "switch", "shared", "--newest", "--data-dir", str(writer))


def snapshot(*roots: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for root in roots for p in sorted(root.rglob("*"))}


def read_only_wrapper(workdir: Path, mounts: list[tuple[Path, Path]]) -> Path:
    """An interpreter stand-in that runs the real one with `mounts` (source, target) bound read-only."""
    steps = " && ".join(
        f"mount --bind '{src}' '{dst}' && mount -o remount,bind,ro '{dst}'" for src, dst in mounts
    )
    wrapper = workdir / "python-ro"
    wrapper.write_text(f"#!/bin/sh\nexec unshare -m sh -c \"{steps} && exec \\\"\\$0\\\" \\\"\\$@\\\"\" "
                       f"'{sys.executable}' \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def can_mount_privately() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True, timeout=10)
    return done.returncode == 0


def set_writable(roots: list[Path], writable: bool) -> None:
    """Without root, read-only file modes stand for the read-only mount."""
    bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


def start_reader(root: Path, shared: list[Path], monkeypatch: pytest.MonkeyPatch) -> Node:
    """A node whose services/ and code-envs/ are `shared`, read-only."""
    targets = [root / "services", root / "code-envs"]
    if os.geteuid() == 0:
        for target in targets:
            target.mkdir(parents=True)
        wrapper = read_only_wrapper(root.parent, list(zip(shared, targets, strict=True)))
        monkeypatch.setattr(sys, "executable", str(wrapper))  # Node.start runs sys.executable
    else:
        root.mkdir()
        for src, target in zip(shared, targets, strict=True):
            target.symlink_to(src)
    return Node(root)


@pytest.fixture
def started() -> Iterator[list[Node]]:
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        if node.proc is not None:
            node.stop(timeout_s=10)


def test_nodes_serve_packages_and_code_envs_from_read_only_mounts(
    tmp_path: Path, started: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0 and not can_mount_privately():
        pytest.skip("root without a private mount namespace: read-only modes would not stop writes")
    writer = tmp_path / "writer"
    writer.mkdir()
    publish(writer, tmp_path / "src-v1", "v1")
    shared = [writer / "services", writer / "code-envs"]
    assert any((writer / "code-envs").iterdir()), "the import built no code env"
    set_writable(shared, False)
    before = snapshot(*shared)

    for name in ("n1", "n2"):
        node = start_reader(tmp_path / name, shared, monkeypatch)
        started.append(node)
        node.start()
        monkeypatch.undo()
    for node in started:
        status, body = node.run("shared", "which", {})
        assert status == 200 and body["response"] == {"generation": "v1"}, (body, node.log())
    assert snapshot(*shared) == before, "a node wrote into the shared packages"

    set_writable(shared, True)
    publish(writer, tmp_path / "src-v2", "v2")  # the writer's next import and switch
    for node in started:
        until(lambda node=node: node.run("shared", "which", {})[1].get("response") == {"generation": "v2"},
              timeout_s=20, what=f"the switch to v2 on {node.url}")
