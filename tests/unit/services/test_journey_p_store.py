"""Journey P (security review): what the data directory holds must not crash a listing."""

from __future__ import annotations

import json
from pathlib import Path

from lightnode.services.store import PACKAGE_FILE, DataDir


def test_a_manifest_nested_too_deeply_lists_with_its_import_time(tmp_path: Path) -> None:
    # A generation whose lightnode-package.json nests "[[[[...]]]]" thousands deep (laid
    # there by hand, or a shared services/ volume) made every listing of the service
    # raise RecursionError: `admin services` printed a traceback, GET .../generations 500.
    data = DataDir(tmp_path / "data")
    data.ensure_layout()
    gen = data.generation_dir("s", "g1")
    gen.mkdir(parents=True)
    service = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
    (gen / "service.json").write_text(json.dumps(service))
    (gen / "e.py").write_text("def e():\n    return 1\n")
    (gen / PACKAGE_FILE).write_text('{"created": ' + "[" * 30000 + "]" * 30000 + "}")
    [info] = data.generations("s")
    assert info.id == "g1" and info.created == info.imported  # unreadable: the import time stands in
