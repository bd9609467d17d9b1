"""Test helpers that run the worker runtime: one call in this process, or the runtime as
the node starts it (its own process, two pipes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightnode.worker import runtime
from lightnode.worker.runtime import Binder


def call(source: str, body: bytes = b"{}", *, dev: bool = False) -> tuple[int, object]:
    """Run `f` of `source` on `body` as a pipeline would: (frame kind, decoded answer)."""
    namespace: dict[str, object] = {}
    exec(source, namespace)
    kind, answer, _ = runtime.call_once(Binder(namespace["f"]), body, dev)  # type: ignore[arg-type]
    return kind, json.loads(answer)


def start_runtime(
    tmp_path: Path, source: str, function: str = "f", code: str = "ep.py"
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The runtime as the node starts it on `source` saved as `code`: (process, call pipe, answer pipe)."""
    (tmp_path / code).write_text(source)
    call_r, call_w = os.pipe()
    ans_r, ans_w = os.pipe()
    spec = {"root": str(tmp_path), "code": code, "function": function, "folders": []}
    proc = subprocess.Popen(
        [sys.executable, runtime.__file__, str(call_r), str(ans_w), json.dumps(spec)],
        pass_fds=(call_r, ans_w), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(call_r)
    os.close(ans_w)
    return proc, call_w, ans_r


def stop_runtime(proc: subprocess.Popen[bytes], call_w: int, ans_r: int) -> bytes:
    """Close the call pipe (the runtime exits at EOF), wait for it; its stderr."""
    os.close(call_w)
    _, stderr = proc.communicate(timeout=10)
    os.close(ans_r)
    return stderr
