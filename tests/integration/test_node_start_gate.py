"""A node of many endpoints boots a few pipelines at a time (scheduler/start_gate.py).

Each endpoint's initialization keeps a core busy for a while and writes when it began
and ended; started all at once (as before the gate), every one of them overlapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightnode.scheduler.start_gate import default_slots
from tests.conftest import write_service

BUSY_INIT = """\
import os, time
_began = time.time()
_cpu = time.process_time()
while time.process_time() - _cpu < 0.4:
    pass
with open({log!r}, "a") as f:
    f.write("%r %r\\n" % (_began, time.time()))

def f():
    return os.getpid()
"""


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_node_of_many_endpoints_boots_them_a_few_at_a_time(node_factory: Any, tmp_path: Path) -> None:
    slots = default_slots()  # the node runs on this machine: the same cores
    count = 3 * slots
    log = tmp_path / "inits.log"
    root = tmp_path / "data"
    write_service(root, "many", {f"e{i}": BUSY_INIT.format(log=str(log)) for i in range(count)})
    node = node_factory(root, start=False)
    node.start(timeout_s=120)  # ready: every pipeline has loaded
    spans = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(spans) == count
    # All at once, each of the `count` inits overlaps the others. A start leaves its slot
    # early only if its process got less than half a core for 0.2 s: a loaded machine
    # may let one or two more in, never all.
    assert _most_at_once(spans) <= 2 * slots, spans  # type: ignore[arg-type]
    for i in range(count):
        assert node.run("many", f"e{i}")[0] == 200
