"""Generations on a live node: zero-downtime switches under load, mappings, refused archives (SPEC §6)."""

from __future__ import annotations

import http.client
import io
import json
import signal
import stat
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import dataikuapi
import pytest
from dataikuapi.utils import DataikuException

from lightnode.cli import main
from tests.conftest import Node, build_test_package, tree_listing, until, write_tuning

pytestmark = pytest.mark.integration


def wait_until(condition: Any) -> None:
    until(condition, timeout_s=15.0)

# Every generation answers the same; apiContext.serviceGeneration tells them apart.
# The module sleeps at load, like a model load, so a switch has something to warm up.
SOURCE = "import time\ntime.sleep({init_s})\ndef e():\n    time.sleep(0.005)\n    return {{'ok': True}}\n"
INIT_S = 0.3


class Load:
    """Client threads on keep-alive connections, POSTing /run until stopped."""

    def __init__(self, node: Node, service: str, threads: int = 4) -> None:
        self.host, port = node.url.removeprefix("http://").split(":")
        self.port = int(port)
        self.path = f"/public/api/v1/{service}/e/run"
        self.results: list[tuple[float, float, int, str, int]] = []  # sent, answered, status, generation, wait µs
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("POST", self.path, body=b"{}")
                answer = conn.getresponse()
                body = json.loads(answer.read())
                status = answer.status
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, {"errorType": repr(exc)}
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            generation = body.get("apiContext", {}).get("serviceGeneration") or body.get("errorType", "?")
            wait_us = body.get("timing", {}).get("wait", 0)
            with self._lock:
                self.results.append((sent, time.monotonic(), status, generation, wait_us))
        conn.close()

    def since(self, moment: float) -> list[tuple[float, float, int, str, int]]:
        with self._lock:
            return [r for r in self.results if r[0] >= moment]

    def count(self) -> int:
        with self._lock:
            return len(self.results)


def admin_post(node: Node, path: str) -> Any:
    request = urllib.request.Request(f"{node.url}/admin/api/{path}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def install(node: Node, tmp_path: Path, generations: list[str]) -> None:
    client = dataikuapi.APINodeAdminClient(node.url, None)
    for generation in generations:
        archive = build_test_package(tmp_path, "svc", generation, {"e": SOURCE.format(init_s=INIT_S)})
        client.service("svc").import_generation_from_archive(str(archive))




def test_switch_under_continuous_load_has_zero_errors(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    # floor == ceil: the warmed pool is the whole pool, so no request ever waits for a cold start
    write_tuning(node.data_dir, "svc", "e", {"pool": {"floor": 4, "cruise": 4, "ceil": 4, "queue": 64}})
    install(node, tmp_path, ["v1", "v2", "v3"])
    admin_post(node, "services/svc/actions/switchTo/v1")

    with Load(node, "svc") as load:
        wait_until(lambda: load.count() > 100)
        asked = time.monotonic()
        assert admin_post(node, "services/svc/actions/switchTo/v2")["switchedToGeneration"] == "v2"
        switched = time.monotonic()
        wait_until(lambda: len(load.since(switched)) > 100)
        # the same through files: the CLI writes state.json, the watcher applies it
        assert main(["admin", "switch", "svc", "v3", "--data-dir", str(node.data_dir)]) == 0
        wait_until(lambda: any(r[3] == "v3" for r in load.since(switched)))
        third = time.monotonic()
        wait_until(lambda: len(load.since(third)) > 100)

    results = load.results
    statuses = Counter(r[2] for r in results)
    assert statuses == {200: len(results)}, Counter((r[2], r[3]) for r in results)
    assert switched - asked >= INIT_S  # the new pools warmed up before the switch answered
    first_v2 = min(r[1] for r in results if r[3] == "v2")
    assert first_v2 > asked + INIT_S  # no request was routed to v2 before it was warm
    assert {r[3] for r in results if r[0] < asked} == {"v1"}
    assert {r[3] for r in load.since(switched)} <= {"v2", "v3"}  # the flip: no v1 after the switch
    first_v3 = min(r[1] for r in results if r[3] == "v3")
    assert {r[3] for r in load.since(first_v3)} == {"v3"}  # the flip is atomic
    assert max(r[4] for r in results if r[3] in ("v2", "v3")) < INIT_S * 1e6 * 0.8  # never waited for a start
    wait_until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v3"})  # old pools stopped


def test_half_and_half_mapping_serves_both(node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = node_factory()
    install(node, tmp_path, ["v1", "v2"])
    assert main(["admin", "set-mapping", "svc", "v1=0.5", "v2=0.5", "--url", node.url]) == 0
    seen = Counter(node.run("svc", "e")[1]["apiContext"]["serviceGeneration"] for _ in range(300))
    assert set(seen) == {"v1", "v2"}
    assert 100 <= seen["v1"] <= 200, seen  # 150 expected; the bounds are 5.7 standard deviations away
    assert main(["admin", "set-mapping", "svc", "v1=0", "v2=1", "--url", node.url]) == 0
    assert {node.run("svc", "e")[1]["apiContext"]["serviceGeneration"] for _ in range(30)} == {"v2"}
    wait_until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v2"})  # v1=0: no pools


def test_a_broken_state_json_never_takes_a_serving_service_down(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    install(node, tmp_path, ["v1"])
    admin_post(node, "services/svc/actions/switchToNewest")
    state = node.data_dir / "services" / "svc" / "state.json"
    good = state.read_text()
    state.write_text('{"enabled": tr')  # an editor caught half-way through a save
    deadline = time.monotonic() + 1.5  # longer than the watcher needs to notice
    while time.monotonic() < deadline:
        assert node.run("svc", "e")[0] == 200
    assert "state.json" in (node.stats("svc")["error"] or "")
    state.write_text(good.replace("true", "false"))
    wait_until(lambda: node.run("svc", "e")[0] == 503)


def test_a_switch_to_a_generation_that_cannot_load_is_not_applied(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    install(node, tmp_path, ["v1"])
    admin_post(node, "services/svc/actions/switchToNewest")
    broken = "raise RuntimeError('model file missing')\ndef e():\n    return 1\n"
    archive = build_test_package(tmp_path, "svc", "bad", {"e": broken})
    dataikuapi.APINodeAdminClient(node.url, None).service("svc").import_generation_from_archive(str(archive))
    with Load(node, "svc") as load:
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            admin_post(node, "services/svc/actions/switchTo/bad")
        time.sleep(0.3)
    message = json.loads(info.value.read())["message"]
    assert info.value.code == 503
    assert message.startswith("switch not applied: generation bad failed to load (")
    assert "model file missing" in message and message.endswith("v1 stays in service")
    answers = load.since(started)
    assert answers and {(status, generation) for _, _, status, generation, _ in answers} == {(200, "v1")}
    assert node.stats("svc")["switchError"] == message
    install(node, tmp_path, ["v3"])  # a good generation afterwards switches as usual
    admin_post(node, "services/svc/actions/switchTo/v3")
    assert node.run("svc", "e")[1]["apiContext"]["serviceGeneration"] == "v3"
    assert node.stats("svc")["switchError"] is None


def _serving_v1_with_a_hung_generation(node_factory: Any, tmp_path: Path, warmup_ms: int) -> tuple[Node, Path]:
    """A node serving svc v1, with a generation `hung` imported whose init appends its pid
    to the file returned, then never returns."""
    data_dir = tmp_path / "node"
    (data_dir / "config").mkdir(parents=True)
    (data_dir / "config" / "server.json").write_text(json.dumps({"switch": {"warmup_timeout_ms": warmup_ms}}))
    node = node_factory(data_dir)
    install(node, tmp_path, ["v1"])
    admin_post(node, "services/svc/actions/switchToNewest")
    pids = tmp_path / "hung-pids"
    hung = f"import os, time\nwith open({str(pids)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\ntime.sleep(600)\ndef e():\n    return 1\n"
    archive = build_test_package(tmp_path, "svc", "hung", {"e": hung})
    dataikuapi.APINodeAdminClient(node.url, None).service("svc").import_generation_from_archive(str(archive))
    return node, pids


def test_a_switch_to_a_generation_whose_init_never_returns_is_not_applied(node_factory: Any, tmp_path: Path) -> None:
    """Past server.json's switch.warmup_timeout_ms with no pipeline of the new generation
    ready (an init that hangs on a model or a database), the switch is refused while the
    previous generation serves, and the pipelines still initializing are stopped."""
    node, pids = _serving_v1_with_a_hung_generation(node_factory, tmp_path, warmup_ms=1500)
    with Load(node, "svc") as load:
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            admin_post(node, "services/svc/actions/switchTo/hung")
        waited = time.monotonic() - started
        time.sleep(0.3)
    message = json.loads(info.value.read())["message"]
    assert info.value.code == 503 and 1.5 <= waited < 10
    assert message == (
        "switch not applied: generation hung not ready after 1.5 s (endpoint e: no pipeline has"
        " finished initializing; see server.json switch.warmup_timeout_ms); v1 stays in service"
    )
    answers = load.since(started)
    assert answers and {(status, generation) for _, _, status, generation, _ in answers} == {(200, "v1")}
    assert node.stats("svc")["switchError"] == message
    started_pids = [int(line) for line in pids.read_text().split()]
    assert started_pids
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in started_pids))
    wait_until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v1"})


def test_a_switch_refused_at_warm_up_is_tried_once_and_again_on_sighup(node_factory: Any, tmp_path: Path) -> None:
    """The admin API applies the state.json it wrote, and the config watcher then sees that
    write: the refused switch used to warm up a second time (up to warmup_timeout_ms,
    120 s by default), and the service's next change waited behind it. A write is tried
    once; SIGHUP, or the same switch asked again, tries it again."""
    node, pids = _serving_v1_with_a_hung_generation(node_factory, tmp_path, warmup_ms=2000)

    def starts() -> int:
        return len(pids.read_text().split()) if pids.exists() else 0

    # One pipeline per try (floor 1); each writes its pid once its module runs.
    with pytest.raises(urllib.error.HTTPError) as info:
        admin_post(node, "services/svc/actions/switchTo/hung")
    info.value.close()
    assert info.value.code == 503
    wait_until(lambda: starts() == 1)
    # Long enough for the watcher to report the write (at once by inotify, within its
    # poll interval otherwise) and for a second warm-up to start its pipeline.
    time.sleep(2.5)
    assert starts() == 1
    assert node.stats("svc")["switchError"] is not None
    wait_until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v1"})
    node.signal(signal.SIGHUP)  # the operator asks for a new try
    wait_until(lambda: starts() == 2)
    wait_until(lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v1"})
    with pytest.raises(urllib.error.HTTPError) as info:  # so does the same switch asked again
        admin_post(node, "services/svc/actions/switchTo/hung")
    info.value.close()
    assert info.value.code == 503
    wait_until(lambda: starts() == 3)
    install(node, tmp_path, ["v3"])
    admin_post(node, "services/svc/actions/switchTo/v3")
    assert node.run("svc", "e")[1]["apiContext"]["serviceGeneration"] == "v3"
    assert starts() == 3


def _zip(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("service.json", json.dumps(
            {"id": "svc", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}))
        zf.writestr("e.py", "def e():\n    return 1\n")
        zf.writestr("lightnode-package.json", json.dumps({"service": "svc", "generation": "evil"}))
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("../../outside.py", b"x")], "path traversal"),
        ([("/tmp/lightnode-absolute.py", b"x")], "absolute path"),
        ([(_symlink("secrets"), b"/etc/shadow")], "symbolic link"),
        ([("bomb.bin", b"\0" * (3 * 1024 * 1024))], "max_package_bytes"),
    ],
    ids=["zip-slip", "absolute", "symlink", "zip-bomb"],
)
def test_malicious_archives_are_refused_with_nothing_written(
    node_factory: Any, tmp_path: Path, members: list[tuple[Any, bytes]], reason: str
) -> None:
    data_dir = tmp_path / "node"
    (data_dir / "config").mkdir(parents=True)
    (data_dir / "config" / "server.json").write_text(json.dumps({"limits": {"max_package_bytes": 1024 * 1024}}))
    node = node_factory(data_dir)
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip(members))
    before, around = tree_listing(node.data_dir / "services"), tree_listing(tmp_path)
    client = dataikuapi.APINodeAdminClient(node.url, None)
    for service in ("svc", "demo"):  # a new service and an existing one
        with pytest.raises(DataikuException, match=f"BadRequest: .*{reason}"):
            client.service(service).import_generation_from_archive(str(archive))
    assert tree_listing(node.data_dir / "services") == before
    assert tree_listing(tmp_path) - around <= {p for p in tree_listing(tmp_path) if p.endswith(".log")}
    assert not Path("/tmp/lightnode-absolute.py").exists()
    assert main(["admin", "import", "svc", str(archive), "--data-dir", str(node.data_dir)]) == 1
    assert tree_listing(node.data_dir / "services") == before


def _state(node: Node, *entries: tuple[str, float], enabled: bool = True) -> None:
    mapping = [{"generation": g, "proba": p} for g, p in entries]
    path = node.data_dir / "services" / "svc" / "state.json"
    path.write_text(json.dumps({"enabled": enabled, "mapping": {"entries": mapping}}))


def test_after_a_briefly_unreadable_state_json_a_switch_that_cannot_load_is_still_refused(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_factory()
    install(node, tmp_path, ["v1"])
    admin_post(node, "services/svc/actions/switchToNewest")
    broken = "import no_such_module_anywhere\ndef e():\n    return 1\n"
    archive = build_test_package(tmp_path, "svc", "b3", {"e": broken})
    dataikuapi.APINodeAdminClient(node.url, None).service("svc").import_generation_from_archive(str(archive))
    state = node.data_dir / "services" / "svc" / "state.json"
    state.write_text("")  # an editor's non-atomic save, caught half-way
    wait_until(lambda: "state.json" in (node.stats("svc")["error"] or ""))
    _state(node, ("b3", 1.0))  # then a switch, by hand, to a generation that cannot load
    wait_until(lambda: node.stats("svc")["switchError"] is not None)
    switch_error = node.stats("svc")["switchError"]
    assert switch_error.startswith("switch not applied: generation b3 failed to load (")
    assert "no_such_module_anywhere" in switch_error
    assert node.stats("svc")["error"] is None  # state.json parses again
    for _ in range(20):
        status, body = node.run("svc", "e")
        assert (status, body.get("apiContext", {}).get("serviceGeneration")) == (200, "v1"), body
    assert "now serving (MappingEntry(generation='b3'" not in node.log()

    # admin status (text) shows it; a switch back to what serves clears it
    assert main(["admin", "status", "svc", "--url", node.url]) == 0
    assert f"switchError: {switch_error}" in capsys.readouterr().out
    _state(node, ("v1", 1.0))
    wait_until(lambda: node.stats("svc")["switchError"] is None)
    assert main(["admin", "status", "svc", "--url", node.url]) == 0
    assert "switchError" not in capsys.readouterr().out
    assert node.run("svc", "e")[1]["apiContext"]["serviceGeneration"] == "v1"


def test_switching_back_through_the_admin_api_clears_the_switch_error(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    install(node, tmp_path, ["v1"])
    admin_post(node, "services/svc/actions/switchToNewest")
    archive = build_test_package(tmp_path, "svc", "b3", {"e": "raise ImportError('nope')\ndef e():\n    return 1\n"})
    dataikuapi.APINodeAdminClient(node.url, None).service("svc").import_generation_from_archive(str(archive))
    with pytest.raises(urllib.error.HTTPError) as info:
        admin_post(node, "services/svc/actions/switchTo/b3")
    info.value.close()
    assert info.value.code == 503 and node.stats("svc")["switchError"] is not None
    admin_post(node, "services/svc/actions/switchTo/v1")  # back to the generation that serves
    assert node.stats("svc")["switchError"] is None


def test_a_refused_state_json_shows_no_path_to_public_clients(node_factory: Any, tmp_path: Path) -> None:
    from tests.conftest import write_service

    root = tmp_path / "data"
    write_service(root, "svc", {"e": "def e():\n    return 1\n"})
    (root / "services" / "svc" / "state.json").write_text("")
    node = node_factory(root)
    status, body = node.run("svc", "e")
    assert status == 503 and body["errorType"] == "ServiceNotActive"
    assert str(root) not in json.dumps(body) and "invalid JSON" not in json.dumps(body)
    assert "invalid JSON" in node.stats("svc")["error"]  # the admin still sees why
