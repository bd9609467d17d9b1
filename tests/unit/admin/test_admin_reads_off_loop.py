"""GET /admin/api/services reads every service's files off the event loop.

On the loop, a node of hundreds of services (about 13 ms for 300 here) or a slow disk
(NFS) held every /run request for as long as the listing took.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lightnode.admin.routes import AdminRoutes
from lightnode.admin.service_layer import ServiceLayer
from lightnode.errors import LightnodeError
from lightnode.services.store import DataDir


class Answers:
    """The part of an Exchange the admin routes answer through."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.threads: list[str] = []

    def respond_json(self, status: int, obj: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.sent.append((status, obj))

    def respond_error(self, error: LightnodeError) -> None:
        self.threads.append(threading.current_thread().name)
        self.sent.append((error.status, error.error_type))


def _routes(data: DataDir, loop: asyncio.AbstractEventLoop) -> AdminRoutes:
    node = SimpleNamespace(
        data_dir=data,
        settings=SimpleNamespace(limits=SimpleNamespace(max_package_bytes=1 << 20)),
        loop=loop,
        registry=None,
    )
    return AdminRoutes(node)  # type: ignore[arg-type]  # the attributes the routes use


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.ensure_layout()
    return d


async def _answered(answers: Answers, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if answers.sent:
            return
        await asyncio.sleep(0.01)


def test_the_service_listing_does_not_hold_the_loop(data: DataDir) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        routes = _routes(data, loop)
        entered, release = threading.Event(), threading.Event()
        reader: list[str] = []

        def slow_listing() -> list[dict[str, Any]]:  # a slow disk
            reader.append(threading.current_thread().name)
            entered.set()
            release.wait(2)
            return [{"id": "s"}]

        routes.layer.services = slow_listing  # type: ignore[method-assign]
        answers = Answers()
        try:
            routes._list_services(answers, {})  # type: ignore[arg-type]
            assert answers.sent == []  # the handler returned at once: the read runs elsewhere
            assert await loop.run_in_executor(None, entered.wait, 5)
            passes = 0
            for _ in range(5):  # the loop goes on while the read waits for its disk
                await asyncio.sleep(0)
                passes += 1
            assert passes == 5 and answers.sent == []
            release.set()
            await _answered(answers)
            assert answers.sent == [(200, [{"id": "s"}])]
            assert reader[0].startswith("lightnode-admin-read")
            assert answers.threads == [threading.current_thread().name]  # answered on the loop
        finally:
            release.set()
            routes.close()

    asyncio.run(scenario())


def test_a_listing_that_fails_off_the_loop_is_answered_with_its_error(data: DataDir) -> None:
    async def scenario() -> None:
        routes = _routes(data, asyncio.get_running_loop())

        def unreadable() -> list[dict[str, Any]]:
            raise PermissionError(13, "Permission denied", str(data.services_dir))

        routes.layer.services = unreadable  # type: ignore[method-assign]
        answers = Answers()
        try:
            routes._list_services(answers, {})  # type: ignore[arg-type]
            await _answered(answers)
            assert answers.sent == [(500, "InternalError")]
        finally:
            routes.close()

    asyncio.run(scenario())


def test_a_service_deleted_while_listed_is_left_out(layer: ServiceLayer, monkeypatch: pytest.MonkeyPatch) -> None:
    layer.create_service("kept")
    listed = layer.data_dir.service_ids()
    # The directory listing named a service that a delete on the admin thread then took away.
    monkeypatch.setattr(layer.data_dir, "service_ids", lambda: [*listed, "gone"])
    assert [info["id"] for info in layer.services()] == ["kept"]
