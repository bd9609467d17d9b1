"""One node per data directory, drain by file, and Kubernetes-style config on a live node (SPEC §10, §12).

- a second node on a data directory that a live node holds refuses to start
  with a clear error, and the lock dies with its holder (even after SIGKILL);
- DATA_DIR/not-alive drains the node: /run answers 503 ShuttingDown (the
  function did not run) while requests already running finish, health answers
  503, and removing the file brings the node back;
- the tuning ConfigMap of config/kubernetes/, laid out as the kubelet does
  (timestamped directory, `..data` link swapped by rename, `<E>.json` links into
  it), is applied at start and its replacement within a second;
- several nodes can serve one shared services directory (the read-only volume
  of the Kubernetes example).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightnode.services.store import DataDir
from tests.conftest import REPO, Node, until, write_service

pytestmark = pytest.mark.integration

SLOW = "import time\ndef slow(ms=300):\n    time.sleep(ms / 1000)\n    return {'slept': ms}\n"


def start_second(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightnode", "--data-dir", str(root), "--port", "0", *extra],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )


def test_a_pidfile_elsewhere_does_not_let_a_second_node_in(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = node_factory(tmp_path / "data")
    second = start_second(first.data_dir, "--pidfile", str(tmp_path / "other.pid"))
    assert second.returncode == 1
    assert second.stderr.strip().startswith("lightnode: another lightnode"), second.stderr
    assert (first.data_dir / "run" / "lightnode.addr").read_text().strip() == first.url


def test_a_second_node_on_a_held_data_dir_refuses_to_start(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = node_factory(tmp_path / "data")
    second = start_second(first.data_dir)
    assert second.returncode == 1
    message = second.stderr.strip()
    assert message.startswith("lightnode: another lightnode"), second.stderr
    assert f"(pid {first.proc.pid})" in message
    assert str(first.data_dir) in message
    assert "Traceback" not in second.stderr
    # The holder is untouched: it still serves, from the same address.
    assert first.get("/readyz")[0] == 200
    assert (first.data_dir / "run" / "lightnode.addr").read_text().strip() == first.url
    assert (first.data_dir / "run" / "lightnode.pid").read_text().strip() == str(first.proc.pid)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_lock_dies_with_its_holder(node_factory, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    first = node_factory(tmp_path / "data")
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
    # A stale pid file left by a killed node does not block: the lock is the kernel's.
    after = node_factory(tmp_path / "data")
    assert after.run("demo", "quote", {"age": 35, "days": 344, "price": 600})[0] == 200
    assert (after.data_dir / "run" / "lightnode.pid").read_text().strip() == str(after.proc.pid)


def wait_status(node: Node, path: str, status: int, timeout_s: float = 3.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if node.get(path)[0] == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {status}")


def test_not_alive_file_drains_the_node_and_removing_it_brings_it_back(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    write_service(root, "svc", {"slow": SLOW})
    node = node_factory(root)
    running: list[tuple[int, object]] = []
    thread = threading.Thread(target=lambda: running.append(node.run("svc", "slow", {"ms": 800})))
    thread.start()
    # The slow request is running (not merely sent: one that reaches the node after the
    # drain would rightly be refused).
    until(lambda: node.stats("svc")["endpoints"][0]["pipelinesByState"].get("busy") == 1, what="busy")
    (root / "not-alive").touch()
    # One poll of the file (0.25 s) flips /isAlive, /readyz and /run together.
    wait_status(node, "/isAlive", 503, timeout_s=5.0)
    wait_status(node, "/readyz", 503, timeout_s=0.1)
    status, headers, raw = node.request("POST", "/public/api/v1/svc/slow/run", b'{"ms": 1}')
    assert status == 503
    assert json.loads(raw)["errorType"] == "ShuttingDown"
    assert headers["Connection"] == "close"
    thread.join(10)
    assert running and running[0][0] == 200, running  # the request already running finished
    (root / "not-alive").unlink()
    wait_status(node, "/readyz", 200, timeout_s=5.0)
    assert node.run("svc", "slow", {"ms": 1})[0] == 200
    assert node.get("/isAlive")[0] == 200


# ------------------------------------------------------------ ConfigMap swap


def shipped_tuning() -> dict[str, str]:
    """The data of the shipped config/kubernetes/configmap-tuning.yaml."""
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extras)")
    docs = list(yaml.safe_load_all((REPO / "config" / "kubernetes" / "configmap-tuning.yaml").read_text()))
    assert len(docs) == 1 and docs[0]["kind"] == "ConfigMap"
    return dict(docs[0]["data"])


class KubeletVolume:
    """Writes a directory the way the kubelet updates a mounted ConfigMap."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, files: dict[str, str]) -> None:
        self.count += 1
        stamp = self.dir / f"..2026_11_27_06_00_{self.count:02d}.{os.getpid()}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
        old = os.readlink(self.dir / "..data") if (self.dir / "..data").is_symlink() else None
        os.symlink(stamp.name, self.dir / "..data_tmp")
        os.replace(self.dir / "..data_tmp", self.dir / "..data")  # the atomic swap
        for name in files:
            if not (self.dir / name).is_symlink():
                os.symlink(f"..data/{name}", self.dir / name)
        if old is not None:
            for leftover in (self.dir / old).iterdir():
                leftover.unlink()
            (self.dir / old).rmdir()


def pool_config(node: Node) -> dict[str, int]:
    return node.stats("demo")["endpoints"][0]["config"]["pool"]


def test_configmap_symlink_swap_reaches_the_pool_within_a_second(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    DataDir(root).init_sample()  # the demo service the shipped ConfigMap tunes
    shipped = shipped_tuning()
    volume = KubeletVolume(root / "config" / "services" / "demo")
    volume.write(shipped)
    assert (volume.dir / "quote.json").resolve().parent.name.startswith("..2026")
    node = node_factory(root)
    expected = json.loads(shipped["quote.json"])["pool"]
    assert pool_config(node) == expected

    changed = json.loads(shipped["quote.json"])
    changed["pool"]["ceil"] = expected["ceil"] + 3
    volume.write({"quote.json": json.dumps(changed)})
    swapped = time.monotonic()
    while pool_config(node)["ceil"] != changed["pool"]["ceil"]:
        assert time.monotonic() - swapped < 1.0, f"not applied within 1 s: {node.stats('demo')}"
        time.sleep(0.02)
    print(f"ConfigMap swap applied after {time.monotonic() - swapped:.3f} s")
    assert node.run("demo", "quote", {"age": 35, "days": 344, "price": 600})[0] == 200
    assert node.stats("demo")["endpoints"][0]["lastConfigError"] is None


def test_nodes_share_one_services_directory(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = tmp_path / "packages"
    write_service(tmp_path / "staging", "svc", {"slow": SLOW})
    (tmp_path / "staging" / "services").rename(shared)
    nodes = []
    for name in ("n1", "n2"):
        root = tmp_path / name
        root.mkdir()
        (root / "services").symlink_to(shared)  # stands for the read-only volume mount
        nodes.append(node_factory(root))
    for node in nodes:
        status, body = node.run("svc", "slow", {"ms": 1})
        assert status == 200 and body["response"] == {"slept": 1}, body
        assert not (node.data_dir / "services" / "demo").exists()  # no sample over shared packages
    assert sorted(p.name for p in shared.iterdir()) == ["svc"]
