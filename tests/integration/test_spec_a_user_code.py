"""SPEC §3.2 and §3.5 on the real node, requirements an audit found without a test:
user code's logging at INFO in the node's log, tagged; LIGHTNODE_PORT beside DKU_APIMAIN_PORT."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Node, until, write_service

pytestmark = pytest.mark.integration

FUNCS = {
    "logs": (
        "import logging\n"
        "logging.getLogger('model').info('model loaded at init')\n"
        "def logs():\n"
        "    logging.getLogger('model').info('scored one request')\n"
        "    return 1\n"
    ),
    "ports": "import os\ndef ports():\n    return [os.environ.get('LIGHTNODE_PORT'), os.environ.get('DKU_APIMAIN_PORT')]\n",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("spec_a_user_code") / "data"
    write_service(root, "svc", FUNCS)
    n = Node(root)
    n.start()
    yield n
    n.stop()


def _log_line(node: Node, text: str) -> str:
    until(lambda: text in node.log(), what=f"{text!r} in the node's log")
    return next(line for line in node.log().splitlines() if text in line)


def test_user_logging_at_info_reaches_the_node_log_tagged(node: Node) -> None:
    status, body = node.run("svc", "logs", {})
    assert status == 200, body
    for text in ("INFO:model:model loaded at init", "INFO:model:scored one request"):
        line = _log_line(node, text)
        assert "svc/logs" in line and "pid=" in line, line


def test_lightnode_port_and_dss_port_are_the_nodes_port(node: Node) -> None:
    status, body = node.run("svc", "ports", {})
    assert (status, body["response"]) == (200, [str(node.port), str(node.port)])


def test_an_enabled_service_without_an_active_generation_is_not_active(node_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # SPEC §3.4: ServiceNotActive "service disabled, or no active generation": enabled,
    # with a generation on disk, but a mapping that routes to none.
    root = tmp_path / "data"
    write_service(root, "svc", {"add": "def add(a):\n    return a\n"})
    (root / "services" / "svc" / "state.json").write_text(json.dumps({"enabled": True, "mapping": {"entries": []}}))
    node = node_factory(root)
    status, body = node.run("svc", "add", {"a": 1})
    assert (status, body["errorType"]) == (503, "ServiceNotActive"), body
    assert body["message"] == "Service svc is not active"
