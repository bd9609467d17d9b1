"""SPEC §6 and §9 requirements on a live node that no other test pins down.

- §6 "then the old pools finish their running and queued requests and stop": a switch
  never fails nor re-routes a request the old generation already holds.
- §6 a service is "disabled until a switch": `enable` of a service without a mapping
  is refused (the client, the CLI), instead of answering "enabled" for a service that
  then answers every request 503 ServiceNotActive.
- §9 "with no admin key defined ... the admin API answers only on loopback": a key
  created with an expiry already past is refused, so that it can neither be handed out
  nor lock the admin API (an expired admin key still counts as defined).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import dataikuapi
import pytest
from dataikuapi.utils import DataikuException

from lightnode.cli import main
from tests.conftest import Node, build_test_package, until, write_tuning

pytestmark = pytest.mark.integration

SLOW = "import time\ndef e(s=0.0):\n    time.sleep(s)\n    return {'ok': True}\n"




def test_a_switch_lets_the_old_generation_finish_its_running_and_queued_requests(
    node_factory: Any, tmp_path: Path
) -> None:
    node: Node = node_factory()
    # one pipeline: the first call runs, the two others wait in the old pool's queue
    write_tuning(node.data_dir, "svc", "e", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 8}})
    client = dataikuapi.APINodeAdminClient(node.url, None)
    for generation in ("g1", "g2"):
        archive = build_test_package(tmp_path, "svc", generation, {"e": SLOW})
        client.service("svc").import_generation_from_archive(str(archive))
    client.service("svc").switch_to_single_generation("g1")

    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        answer = node.run("svc", "e", {"s": 1.5}, timeout=60)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    until(lambda: sum(e["queueLength"] for e in node.stats("svc")["endpoints"]) == 2, timeout_s=20)
    client.service("svc").switch_to_single_generation("g2")
    status, body = node.run("svc", "e")  # new requests go to the new generation at once
    assert status == 200 and body["apiContext"]["serviceGeneration"] == "g2"
    for thread in threads:
        thread.join(60)

    assert [(s, b.get("apiContext", {}).get("serviceGeneration")) for s, b in answers] == [(200, "g1")] * 3, answers
    until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"g2"}, timeout_s=20)  # then the old pool stops


def test_enable_without_a_mapping_is_refused_by_the_api_and_the_cli(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node: Node = node_factory()
    client = dataikuapi.APINodeAdminClient(node.url, None)
    archive = build_test_package(tmp_path, "svc", "g1", {"e": SLOW})
    client.service("svc").import_generation_from_archive(str(archive))  # creates it, disabled
    with pytest.raises(DataikuException, match="BadRequest: cannot enable service svc: it has no generation mapping"):
        client.service("svc").enable()
    for target in (["--url", node.url], ["--data-dir", str(node.data_dir)]):
        assert main(["admin", "enable", "svc", *target]) == 1
        assert "no generation mapping" in capsys.readouterr().err
    assert {s["id"]: s["enabled"] for s in client.list_services()}["svc"] is False
    status, body = node.run("svc", "e")
    assert (status, body["errorType"]) == (503, "ServiceNotActive")

    client.service("svc").switch_to_newest()  # a switch maps and enables it
    client.service("svc").disable()
    client.service("svc").enable()
    assert node.run("svc", "e")[0] == 200


def test_a_key_created_already_expired_is_refused_and_leaves_the_admin_api_open(
    node_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    node: Node = node_factory()
    client = dataikuapi.APINodeAdminClient(node.url, None)
    past_ms = int((time.time() - 3600) * 1000)
    with pytest.raises(DataikuException, match="BadRequest: expiry: .* is already past"):
        client.auth().add_key(label="ops", expiry=past_ms)
    assert main(["admin", "keys", "create", "--admin", "--expiry", "2020-01-01T00:00:00Z",
                 "--data-dir", str(node.data_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "is already past" in err
    assert main(["admin", "keys", "create", "--service", "demo", "--expiry", "2020-01-01T00:00:00Z",
                 "--url", node.url]) == 1
    assert "is already past" in capsys.readouterr().err

    assert client.auth().list_keys() == []  # nothing was written: loopback still opens the admin API
    assert not (node.data_dir / "config" / "keys.json").exists() or json.loads(
        (node.data_dir / "config" / "keys.json").read_text()
    ) == {"keys": []}
    assert "demo" in {s["id"] for s in client.list_services()}
