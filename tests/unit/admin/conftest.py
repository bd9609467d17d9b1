"""The admin unit tests' ServiceLayer on an empty data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightnode.admin.service_layer import ServiceLayer
from lightnode.services.store import DataDir


@pytest.fixture
def layer(tmp_path: Path) -> ServiceLayer:
    data = DataDir(tmp_path / "data")
    data.ensure_layout()
    return ServiceLayer(data)
