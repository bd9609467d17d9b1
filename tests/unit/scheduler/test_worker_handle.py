"""WorkerHandle with a real pipeline process: a call sent to a pipeline that just died.

Between a pipeline's death and the report of its exit the node may still send it
a call (a prefetched one, typically). The broken pipe must not raise out of the
dispatch: the exit, reported next, settles the call.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from lightnode.scheduler.worker_handle import WorkerHandle, WorkerSpec


class Listener:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.events: list[tuple[str, Any]] = []

    def worker_ready(self, worker_id: int, info: dict[str, object]) -> None:
        self.events.append(("ready", info))
        self.ready.set()

    def worker_init_failed(self, worker_id: int, message: str, traceback: str) -> None:
        self.events.append(("init_failed", message))

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        self.events.append(("answered", body))

    def worker_exited(self, worker_id: int, detail: str) -> None:
        self.events.append(("exited", detail))
        self.exited.set()


def test_a_call_sent_to_a_dead_pipeline_is_settled_by_its_exit(tmp_path: Path) -> None:
    (tmp_path / "add.py").write_text("def add(a=0, b=0):\n    return {'sum': a + b}\n")
    spec = WorkerSpec("svc", "add", "v1", tmp_path, "add.py", None)

    async def scenario() -> None:
        listener = Listener()
        handle = WorkerHandle(asyncio.get_running_loop(), 1, spec, listener)
        handle.spawn()
        await asyncio.wait_for(listener.ready.wait(), 10)
        os.kill(handle.pid, signal.SIGKILL)
        # Write until the node's side of the pipe notices the broken pipe; no write raises.
        for _ in range(200):
            handle.send_call(b'{"a": 1, "b": 2}')
            if listener.exited.is_set():
                break
            await asyncio.sleep(0.005)
        await asyncio.wait_for(listener.exited.wait(), 10)
        assert listener.events[-1] == ("exited", "killed by signal SIGKILL")
        handle.send_call(b"{}")  # after the exit too: nothing to write to, nothing raised

    asyncio.run(scenario())
