"""The dev loop's pieces that need no node: change merging, interrupted queries, the pipelines' env."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from lightnode.devtools import report as rp
from lightnode.devtools.server import Changes
from lightnode.devtools.session import DEV_PIPELINE_ENV, DevSession, QueryOutcome


def test_changes_made_during_a_reload_are_taken_at_once_and_merged() -> None:
    async def scenario() -> list[list[str]]:
        changes = Changes()
        changes.add({"b.py"})
        changes.add({"a.py", "b.py"})  # a second save while the first reload runs
        first = await changes.take()
        assert not changes.event.is_set()
        waiting = asyncio.ensure_future(changes.take())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing changed since: the loop waits
        changes.add({"service.json"})
        return [first, await asyncio.wait_for(waiting, 5)]

    assert asyncio.run(scenario()) == [["a.py", "b.py"], ["service.json"]]


def _changed(changes: Changes, *names: str) -> set[str]:
    """Add a save of `names`; the names that ask for a reload (taken), or none."""
    changes.add(set(names))
    taken, changes.names = changes.names, set()
    assert changes.event.is_set() == bool(taken)
    changes.event.clear()
    return taken


def test_a_file_changed_during_two_reloads_in_a_row_is_taken_as_written_by_the_service() -> None:
    notices: list[str] = []
    changes = Changes(notice=notices.append)
    changes.reload_started()
    assert _changed(changes, "models/cache.txt") == {"models/cache.txt"}  # may be a save: it reloads
    changes.reload_ended()
    changes.reload_started()
    assert _changed(changes, "models/cache.txt", "logs/x.log") == {"logs/x.log"}  # x.log: its first time
    changes.reload_ended()
    assert changes.ignored == {"models/cache.txt"} and len(notices) == 1
    assert "models/cache.txt: changed again while the service reloaded" in notices[0]
    assert _changed(changes, "models/cache.txt") == set()  # ignored from then on, said once
    assert len(notices) == 1
    for _ in range(2):  # code is never taken as the service's own
        changes.reload_started()
        assert _changed(changes, "quote.py", "service.json", "requirements.txt") == {
            "quote.py", "service.json", "requirements.txt"}
        changes.reload_ended()
    assert changes.ignored == {"models/cache.txt"}


def test_a_data_file_saved_between_reloads_always_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer editing a data file: saves that come while no reload runs are saves."""
    import lightnode.devtools.server as server

    monkeypatch.setattr(server, "SELF_WRITE_WINDOW_S", 0.0)
    changes = Changes()
    for _ in range(3):
        changes.reload_started()
        changes.reload_ended()
        assert _changed(changes, "data.csv")
    assert changes.ignored == set()


def test_an_interrupted_query_is_shown_as_such() -> None:
    cut = QueryOutcome("quote", "hangs", latency_ms=1500.0, interrupted=True, error="interrupted by a change")
    line = rp.render_queries([cut]).splitlines()[1]
    assert line.split() == ["quote", "hangs", "-", "1500.0", "ms", "INTERRUPTED", "interrupted", "by", "a", "change"]


def test_interrupted_outcome_names_the_query_under_way() -> None:
    session = DevSession(Path("/src"))
    assert session.interrupted_outcome() is None
    session.playing = ("quote", "hangs", 0.0)
    cut = session.interrupted_outcome()
    assert cut is not None and (cut.endpoint_id, cut.name, cut.interrupted, cut.passed) == ("quote", "hangs", True, False)


def test_pipeline_env_is_set_for_the_session_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEV_PIPELINE_ENV == {"PYTHONDONTWRITEBYTECODE": "1"}
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("LIGHTNODE_TEST_KEEP", "before")
    session = DevSession(Path("/src"))
    session._set_pipeline_env({"PYTHONDONTWRITEBYTECODE": "1", "LIGHTNODE_TEST_KEEP": "during"})
    assert os.environ["PYTHONDONTWRITEBYTECODE"] == "1" and os.environ["LIGHTNODE_TEST_KEEP"] == "during"
    session._restore_env()
    assert "PYTHONDONTWRITEBYTECODE" not in os.environ
    assert os.environ["LIGHTNODE_TEST_KEEP"] == "before"


@pytest.mark.parametrize(("path", "reloads"), [
    ("quote.py", True),
    ("service.json", True),
    ("model/weights.bin", True),
    ("4914", True),
    ("#quote.py#", False),  # Emacs auto-save, written while typing, before any save
    (".#quote.py", False),  # Emacs lock file
    ("4913", False),  # Vim's probe of the directory on :w
    ("5036", False),
    (".quote.py.swp", False),
    ("quote.py~", False),
    ("__pycache__/quote.cpython-311.pyc", False),
    (".git/index", False),
])
def test_watch_filter_ignores_editor_and_cache_files(path: str, reloads: bool) -> None:
    from watchfiles import Change

    from lightnode.devtools.server import DevFilter

    assert DevFilter(Path("/src/pricing"))(Change.modified, f"/src/pricing/{path}") is reloads


def test_watch_filter_applies_to_paths_inside_src_dir_only() -> None:
    """A SRC_DIR that lies inside, say, a node_modules or .venv directory is still watched."""
    from watchfiles import Change

    from lightnode.devtools.server import DevFilter

    root = Path("/home/me/node_modules/pricing")
    assert DevFilter(root)(Change.modified, f"{root}/quote.py")
    assert not DevFilter(root)(Change.modified, f"{root}/node_modules/x.js")
