"""Text UTF-8 cannot carry, from user code, against a live node (SPEC §3.4).

JSON may escape a lone surrogate (`"\\udfff"`); Python's `json.dumps` writes one for a
string holding it, so the official client sends it as it is. When a function puts such
text in its exception, the error answer must still go out, and the pipeline must stay
in service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Node, write_service, write_tuning

pytestmark = pytest.mark.integration

FUNCS = {
    "raiser": "def raiser(msg='boom'):\n    raise ValueError(msg)\n",
    "echo": "def echo(msg=''):\n    return {'msg': msg}\n",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("surrogates") / "data"
    write_service(root, "svc", FUNCS)
    for endpoint in FUNCS:
        # One pipeline and no queue to spare: a pipeline lost to one bad answer would
        # leave every later call of this endpoint waiting.
        write_tuning(root, "svc", endpoint, {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "timeout": 3000}})
    n = Node(root)
    n.start()
    yield n
    n.stop()


def test_an_error_message_with_a_lone_surrogate_is_answered(node: Node) -> None:
    for _ in range(3):
        status, body = node.run("svc", "raiser", {"msg": "x\udfff/y"}, timeout=10)
        assert status == 500, body
        assert body["errorType"] == "FunctionError"
        assert "x\udfff/y" in body["message"] or "\\udfff" in body["message"], body
    # The pipeline is still serving: the next calls are answered at once.
    assert node.run("svc", "raiser", {"msg": "plain"}, timeout=10)[0] == 500
    (raiser,) = [e for e in node.stats("svc")["endpoints"] if e["endpointId"] == "raiser"]
    assert raiser["counters"]["crashes"] == 0, raiser
    assert raiser["counters"]["served"] == 4, raiser


def test_a_result_with_a_lone_surrogate_round_trips(node: Node) -> None:
    status, body = node.run("svc", "echo", {"msg": "a\udcffb"}, timeout=10)
    assert status == 200, body
    assert body["response"] == {"msg": "a\udcffb"}
