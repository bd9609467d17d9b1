"""A stand-in for the `lightnode` command, so scenario set-up and faults are tested alone.

    python lt_fake_node.py deploy SRC --data-dir DIR [--generation G]
    python lt_fake_node.py package SRC -o ZIP --generation G
    python lt_fake_node.py --data-dir DIR --host 127.0.0.1 --port P     (serve)

Serving answers /isAlive, /readyz, /run (200 envelope), /metrics (pool gauges),
and the admin routes the harness uses: stats (with the pid of a real child
process standing for a pipeline, replaced when it dies), endpoint settings,
importFromArchive and switchToNewest. Every admin call is appended to
DIR/admin-calls.log. SIGTERM stops it. Loopback only.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

from lt_tiny_server import TinyServer


def _reply(status: str, value: object) -> bytes:
    body = json.dumps(value).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class FakeNode(TinyServer):
    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.pipeline = self._new_pipeline()
        self.generation = "v1"
        self.services: list[str] = []

    @staticmethod
    def _new_pipeline() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def answer(self, path: str) -> bytes:
        if not path.startswith("/admin/api/"):
            return super().answer(path)
        with open(self.data_dir / "admin-calls.log", "a") as log:
            log.write(path + "\n")
        if path.endswith("/stats"):
            if self.pipeline.poll() is not None:
                self.pipeline = self._new_pipeline()
            return _reply(
                "200 OK",
                {
                    "serviceId": "bench",
                    "endpoints": [
                        {
                            "endpointId": "add",
                            "generation": self.generation,
                            "queueLength": 0,
                            "pipelines": [
                                {"workerId": 1, "pid": self.pipeline.pid, "state": "busy"}
                            ],
                        }
                    ],
                },
            )
        if path == "/admin/api/services":
            return _reply("200 OK", [{"id": s, "enabled": True} for s in self.services])
        if path == "/admin/api/services/":
            self.services.append("bench")
            return _reply("200 OK", {})
        if "/actions/switchToNewest" in path:
            self.generation = "v2"
            return _reply("200 OK", {"switchedToGeneration": self.generation})
        if "importFromArchive" in path or path.endswith("/settings"):
            return _reply("200 OK", {})
        return _reply(
            "404 Not Found", {"errorType": "NotFound", "message": path, "detailedMessage": path}
        )

    def close(self) -> None:
        self.pipeline.kill()
        self.pipeline.wait()


def serve(data_dir: Path, port: int) -> None:
    node = FakeNode(data_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node.start(port)
    stop.wait()
    node.stop()
    node.close()


def main(argv: list[str]) -> int:
    if argv[0] == "deploy":
        data_dir = Path(argv[argv.index("--data-dir") + 1])
        target = data_dir / "services" / "bench"
        target.mkdir(parents=True)
        shutil.copy(Path(argv[1]) / "service.json", target / "service.json")
        return 0
    if argv[0] == "package":
        with zipfile.ZipFile(argv[argv.index("-o") + 1], "w") as archive:
            archive.writestr(
                "lightnode-package.json",
                json.dumps(
                    {"service": "bench", "generation": argv[argv.index("--generation") + 1]}
                ),
            )
        return 0
    serve(Path(argv[argv.index("--data-dir") + 1]), int(argv[argv.index("--port") + 1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
