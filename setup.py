"""Build script: the metadata is in setup.cfg; this file only adds the compiled hot path.

    LIGHTNODE_COMPILE=1 python3 -m pip install .

compiles the modules of `lightnode.hotbuild.HOT_MODULES` with mypyc (about a
minute; needs a C compiler and the Python headers). Without the variable the
package is pure Python. See "Compiled hot path" in README.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _hotbuild():  # type: ignore[no-untyped-def]
    """lightnode/hotbuild.py, loaded alone (the package's dependencies may not be installed)."""
    spec = importlib.util.spec_from_file_location("_lightnode_hotbuild", ROOT / "lightnode" / "hotbuild.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ext_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("LIGHTNODE_COMPILE", "") in ("", "0"):
        return []
    from mypyc.build import mypycify

    hotbuild = _hotbuild()
    package_dir = ROOT / "lightnode"
    hotbuild.write_manifest(package_dir)
    paths = [str(hotbuild.source_path(package_dir, m).relative_to(ROOT)) for m in hotbuild.HOT_MODULES]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return mypycify(
        ["--python-version", version, *paths],
        opt_level="3",
        group_name=hotbuild.GROUP_NAME,
    )


setup(ext_modules=ext_modules())
