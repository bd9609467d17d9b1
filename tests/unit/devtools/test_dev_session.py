"""DevDataDir: dev generations are the source directory itself; everything else is a normal data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lightnode.devtools.session import DevDataDir, default_code_envs_dir
from lightnode.errors import IdError


def test_dev_generations_resolve_to_the_source_dir(tmp_path: Path) -> None:
    store = DevDataDir(tmp_path / "data", tmp_path / "src", tmp_path / "envs")
    assert store.generation_dir("pricing", "dev-1") == tmp_path / "src"
    assert store.generation_dir("pricing", "dev-42") == tmp_path / "src"
    assert store.generation_dir("pricing", "v1") == tmp_path / "data" / "services" / "pricing" / "generations" / "v1"
    assert store.code_envs_dir == tmp_path / "envs"
    with pytest.raises(IdError):
        store.generation_dir("../x", "dev-1")


def test_code_envs_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_code_envs_dir() == tmp_path / "lightnode" / "code-envs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_code_envs_dir() == tmp_path / "home" / ".cache" / "lightnode" / "code-envs"


def test_a_query_without_an_answer_names_the_time_it_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lightnode test` on a hung query: the report says how long it waited, not only "TimeoutError"."""
    from lightnode.devtools import session
    from lightnode.services.model import TestQuery

    monkeypatch.setattr(session, "QUERY_TIMEOUT_S", 0.2)

    async def scenario() -> str | None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # and no answer

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            outcome = await session.play_query(f"http://127.0.0.1:{port}", "s", "e", TestQuery("hang", {}, None))
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()
        return outcome.error

    assert asyncio.run(scenario()) == "no answer within 0.2 s"
