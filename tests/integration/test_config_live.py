"""Hot reload of a real node under the ways operators and tools change its files (SPEC §5, §9)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lightnode.cli import main
from lightnode.config.validate import MAX_CONFIG_FILE_BYTES
from tests.conftest import Node, until, write_service

pytestmark = pytest.mark.integration

SOURCE = "def e(x=0):\n    return {'x': x}\n"


def _status_with(node: Node, key: str) -> int:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    status, _, _ = node.request("POST", "/public/api/v1/priv/e/run", b"{}", headers=auth)
    return status


def test_a_key_deleted_from_a_keys_file_over_a_megabyte_stops_working(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thousands of keys make keys.json larger than a tuning file may be; a revocation
    written to it by the CLI must still reach the running node."""
    root = tmp_path / "data"
    write_service(root, "priv", {"e": SOURCE}, extra={"auth": {"public": False}})
    filler = {"hash": "sha256:" + "0" * 64, "serviceId": "other", "label": "x" * 200}
    count = MAX_CONFIG_FILE_BYTES // 250 + 100
    keys = {"keys": [{"id": f"old{i}", **filler} for i in range(count)]}
    (root / "config").mkdir(parents=True)
    (root / "config" / "keys.json").write_text(json.dumps(keys))
    data_dir = ["--data-dir", str(root)]
    assert main(["admin", "keys", "create", "--service", "priv", "--label", "leaked", *data_dir]) == 0
    key = capsys.readouterr().out.strip()
    assert (root / "config" / "keys.json").stat().st_size > MAX_CONFIG_FILE_BYTES
    node = node_factory(root)
    assert _status_with(node, key) == 200
    assert main(["admin", "keys", "delete", key, *data_dir]) == 0
    until(lambda: _status_with(node, key) == 401)


def _pool(node: Node, service: str, endpoint: str) -> dict[str, Any]:
    stats = node.stats(service)
    config = next(e for e in stats["endpoints"] if e["endpointId"] == endpoint)["config"]
    return config["pool"]  # type: ignore[no-any-return]


def test_a_tuning_file_linked_to_a_config_repository_stays_linked_through_tune(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    write_service(root, "p", {"e": SOURCE})
    kept = tmp_path / "repo" / "e.json"  # the operator's config repository
    kept.parent.mkdir()
    kept.write_text(json.dumps({"pool": {"floor": 1, "cruise": 1, "ceil": 2}}))
    link = root / "config" / "services" / "p" / "e.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(kept)
    node = node_factory(root)
    assert _pool(node, "p", "e")["ceil"] == 2
    assert main(["admin", "tune", "p", "e", "--ceil", "5", "--data-dir", str(root)]) == 0
    capsys.readouterr()
    until(lambda: _pool(node, "p", "e")["ceil"] == 5)
    assert link.is_symlink() and json.loads(kept.read_text())["pool"]["ceil"] == 5
    with open(kept, "w") as f:  # a later edit in the repository, in place
        f.write(json.dumps({"pool": {"floor": 1, "cruise": 1, "ceil": 3}}))
    until(lambda: _pool(node, "p", "e")["ceil"] == 3)
