"""Journey M: the node killed (kill -9) during an admin import, then started again."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from lightnode.services.package import build_package
from tests.conftest import until


def make_package(tmp_path: Path, generation: str, files: int = 300) -> Path:
    src = tmp_path / "src"
    if not src.exists():
        (src / "data").mkdir(parents=True)
        for i in range(files):
            (src / "data" / f"f{i}.bin").write_bytes(os.urandom(20_000))
        (src / "big.py").write_text("def run(x=1):\n    return {'x': x}\n")
        service = {"id": "big", "endpoints": [{"id": "e", "type": "python-function", "code": "big.py"}]}
        (src / "service.json").write_text(json.dumps(service))
    return build_package(src, output=tmp_path / f"big-{generation}.zip", generation=generation).path


def import_path(archive: Path) -> str:
    query = urllib.parse.urlencode({"filePath": str(archive)})
    return f"/admin/api/services/big/generations/actions/importFromArchive?{query}"


def test_node_killed_during_an_import_starts_again_and_takes_the_same_generation(
    tmp_path: Path, node_factory: Any
) -> None:
    archive = make_package(tmp_path, "g1")
    data = tmp_path / "data"
    node = node_factory(data)
    services = data / "services"
    answers: list[object] = []

    def run_import() -> None:
        try:
            answers.append(node.request("POST", import_path(archive))[0])
        except OSError as exc:  # the node died under it
            answers.append(exc)

    thread = threading.Thread(target=run_import)
    thread.start()
    # Kill it while it unpacks: once its staging directory holds some files.
    until(lambda: any(p.name.startswith(".import-") and sum(1 for _ in p.rglob("*.bin")) > 5
                      for p in services.iterdir()), 20, "the import to be unpacking", interval_s=0.005)
    node.kill_group()
    node.stop()  # closes its log
    thread.join(30)
    assert not (services / "big").exists()  # nothing half-installed
    node = node_factory(data)
    assert node.get("/readyz")[0] == 200
    assert sorted(p.name for p in services.iterdir()) == ["demo"]  # its start removed the debris
    status, _, body = node.request("POST", import_path(archive))
    assert status == 200, body
    assert sorted(p.name for p in services.iterdir()) == ["big", "demo"]
    status, _, body = node.request("POST", "/admin/api/services/big/actions/switchToNewest")
    assert status == 200, body
    status, answer = node.run("big", "e", {"x": 2})
    assert (status, answer["response"]) == (200, {"x": 2})


def test_staging_bearing_the_restarted_node_pid_is_removed_by_its_next_import(
    tmp_path: Path, node_factory: Any
) -> None:
    # In a container the node gets the same pid at every start (under tini, 7): the
    # staging of an import killed with the previous node names a pid alive again.
    archive = make_package(tmp_path, "g1", files=3)
    data = tmp_path / "data"
    node = node_factory(data)
    stale = data / "services" / f".import-{node.proc.pid}-k1lled00"
    (stale / "service" / "generations" / "g0").mkdir(parents=True)
    (stale / "service" / "generations" / "g0" / "big.bin").write_bytes(b"\0" * 100_000)
    grave = data / "services" / ".deleted-old-k1lled00"  # a delete killed half way
    (grave / "generations").mkdir(parents=True)
    status, _, body = node.request("POST", import_path(archive))
    assert status == 200, body
    assert sorted(p.name for p in (data / "services").iterdir()) == ["big", "demo"]
