"""Requirements of SPEC §6 and §9 checked on the service layer, sentence by sentence."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lightnode.admin.service_layer import ServiceLayer
from lightnode.errors import LightnodeError
from lightnode.services.package import build_package
from lightnode.services.store import DataDir, ServiceState
from tests.unit.admin.test_service_layer import make_src

# --- §6: "creating the service if it does not exist (disabled until a switch)" ---------


def test_enable_without_a_mapping_is_refused_and_says_what_to_do(layer: ServiceLayer, tmp_path: Path) -> None:
    """An imported (or created) service has no mapping: `enable` cannot serve it, so it must not
    answer "enabled" while every request then gets 503 ServiceNotActive."""
    built = build_package(make_src(tmp_path), output=tmp_path / "g1.zip", generation="g1")
    layer.import_archive("svc", built.path)
    with pytest.raises(LightnodeError) as info:
        layer.enable("svc")
    assert info.value.status == 400
    assert "no generation mapping" in info.value.message
    assert "switch" in info.value.message and "set-mapping" in info.value.message
    assert layer.data_dir.read_state("svc") == ServiceState(enabled=False)  # nothing written

    layer.create_service("empty")
    with pytest.raises(LightnodeError, match="no generation mapping"):
        layer.enable("empty")
    assert layer.data_dir.read_state("empty").enabled is False

    layer.switch_to("svc", "g1")  # with a mapping, enable works as before
    layer.disable("svc")
    assert layer.enable("svc")["enabled"] is True


# --- §9: keys created through the CLI and the admin API ------------------------------


@pytest.mark.parametrize("admin", [True, False])
def test_a_key_that_would_be_expired_at_creation_is_refused(layer: ServiceLayer, admin: bool) -> None:
    """An expiry already past makes a key refused from its first use; an admin key so created
    also locks the admin API (an expired admin key still counts): refuse it, write nothing."""
    service_id = None if admin else "svc"
    for expiry in ("2001-01-01T00:00:00Z", int((time.time() - 60) * 1000)):
        with pytest.raises(LightnodeError) as info:
            layer.create_key(service_id=service_id, expiry=expiry)
        assert info.value.status == 400 and "expiry" in info.value.message and "past" in info.value.message
    assert layer.list_keys() == []
    assert not layer.data_dir.keys_path.exists()
    future = layer.create_key(service_id=service_id, expiry="2100-01-01T00:00:00Z")
    assert future["expiry"] == "2100-01-01T00:00:00Z" and future["expired"] is False


# --- §6 "deploy SRC_DIR --data-dir DIR [--generation G] = package + import + switch" -----


def test_a_refused_deploy_names_the_source_not_a_temporary_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy packages into a temporary file that is gone when it exits: an import refusal
    must name what the operator gave (SRC_DIR), not that file."""
    from lightnode.cli import main

    src = make_src(tmp_path)
    data = tmp_path / "data"
    DataDir(data).ensure_layout()
    assert main(["deploy", str(src), "--data-dir", str(data), "--generation", "g1"]) == 0
    capsys.readouterr()
    assert main(["deploy", str(src), "--data-dir", str(data), "--generation", "g1"]) == 1
    err = capsys.readouterr().err
    assert "lightnode-deploy-" not in err and "package.zip" not in err, err
    assert f"{src} (packaged as generation g1)" in err and "generation g1 of service svc is already present" in err
