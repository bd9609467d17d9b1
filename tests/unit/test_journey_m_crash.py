"""Journey M: an operator whose machines crash (kill -9, power cuts) during admin work.

What a crash may leave behind (staging directories, graveyards, temp packages) must be
removed by the next operation or never be picked up, and what an import reports done
must survive a power cut.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightnode.admin import lifecycle_cli, service_layer
from lightnode.admin.service_layer import ServiceLayer
from lightnode.errors import LightnodeError
from lightnode.services import package
from lightnode.services.package import PackageRefused, build_package, import_package
from lightnode.services.store import DataDir

LIMIT = 10 * 1024 * 1024
SERVICE = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}


def package_bytes(generation: str = "g1", extra: list[tuple[str, bytes]] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("lightnode-package.json", json.dumps({"service": "s", "generation": generation}))
        zf.writestr("service.json", json.dumps(SERVICE))
        zf.writestr("e.py", "def run(x=1):\n    return x\n")
        for name, data in extra or []:
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    store = DataDir(tmp_path / "data")
    store.ensure_layout()
    return store


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch os.fsync to record the path of every descriptor it flushes."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


# ------------------------------------------------------------------ power cut


@pytest.mark.parametrize("existing_service", [False, True])
def test_an_import_is_on_disk_before_it_is_reported_done(
    tmp_path: Path, data: DataDir, monkeypatch: pytest.MonkeyPatch, existing_service: bool
) -> None:
    # Unpacked files were never flushed, nor the rename that installs them: a power cut
    # within the next seconds (ext4 commits every 5 s, writes back later still) could
    # leave the generation in place with empty or missing files (an empty service.json),
    # while the import had answered done and a later switch (state.json is flushed)
    # had mapped it. Re-importing it is then refused: "already present".
    if existing_service:
        first = tmp_path / "g0.zip"
        first.write_bytes(package_bytes("g0"))
        import_package(data, "s", first, max_bytes=LIMIT)
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1", [(f"m/d{i % 3}/f{i}.bin", b"x" * i) for i in range(12)]))
    synced = record_fsyncs(monkeypatch)
    result = import_package(data, "s", archive, max_bytes=LIMIT)
    generation = result.path
    marker = "/service/generations/g1/"
    flushed_files = {p.split(marker, 1)[1] for p in synced if marker in p}
    expected = {p.relative_to(generation).as_posix() for p in generation.rglob("*")}
    assert expected <= flushed_files  # every file and directory of the generation
    # ... and the rename that put it in place, in the directory that received it.
    home = str(data.generations_dir("s")) if existing_service else str(data.services_dir)
    assert home in synced
    assert synced.index(home) > max(i for i, p in enumerate(synced) if marker in p)


def test_a_new_service_state_json_is_flushed_with_it(
    tmp_path: Path, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    synced = record_fsyncs(monkeypatch)
    import_package(data, "s", archive, max_bytes=LIMIT)
    assert any(p.endswith("/service/state.json") for p in synced)


# ------------------------------------------------------------------ kill -9 debris


def test_staging_of_a_killed_import_with_this_very_pid_is_removed(tmp_path: Path, data: DataDir) -> None:
    # In a container the node always gets the same pid (tini is 1, lightnode 7): the
    # staging directory of an import killed with the node (OOM, docker kill) names a
    # pid that is alive again, the restarted node's own, and was kept for ever.
    stale = data.services_dir / f"{package.STAGING_PREFIX}{os.getpid()}-abcd1234"
    (stale / "service" / "generations" / "g0").mkdir(parents=True)
    (stale / "service" / "generations" / "g0" / "big.bin").write_bytes(b"\0" * 1000)
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    import_package(data, "s", archive, max_bytes=LIMIT)
    assert not stale.exists()
    assert sorted(p.name for p in data.services_dir.iterdir()) == ["s"]


def test_an_import_in_progress_in_this_process_keeps_its_staging(tmp_path: Path, data: DataDir) -> None:
    # The node runs admin imports in threads: one import must not remove the staging
    # directory of another running beside it in the same process.
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    seen: list[bool] = []
    real_extract = package._extract

    def extract(zf: zipfile.ZipFile, dest: Path, **kw: object) -> int:
        mine = dest.parents[2]  # .import-<pid>-*/service/generations/<G>
        package.remove_stale_staging(data.services_dir)  # another import starting now
        seen.append(mine.is_dir())
        return real_extract(zf, dest, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(package, "_extract", extract)
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert seen == [True]


def test_graveyard_of_a_killed_delete_is_removed_by_the_next_import_and_delete(
    tmp_path: Path, data: DataDir
) -> None:
    # `admin delete` renames the service to services/.deleted-<S>-<token> and then removes
    # it: killed in between (a service of GBs takes a while), the graveyard stayed for ever.
    graves = []
    for name in (".deleted-old-abcd1234", ".deleted-old-g1-abcd1234"):
        grave = data.services_dir / name / "generations" / "g1"
        grave.mkdir(parents=True)
        (grave / "big.bin").write_bytes(b"\0" * 1000)
        graves.append(data.services_dir / name)
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    import_package(data, "s", archive, max_bytes=LIMIT)
    assert not any(g.exists() for g in graves)
    grave = data.services_dir / ".deleted-old-ffff0000"
    grave.mkdir()
    ServiceLayer(data).delete_service("s")
    assert sorted(p.name for p in data.services_dir.iterdir()) == []


def _service_src(tmp_path: Path) -> Path:
    """A service's source directory (SERVICE, one endpoint) under `tmp_path`."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "service.json").write_text(json.dumps(SERVICE))
    (src / "e.py").write_text("def run(x=1):\n    return x\n")
    return src


def test_package_leaves_out_the_partial_zip_of_a_killed_package_run(tmp_path: Path) -> None:
    # `lightnode package . -o svc.zip` killed half way leaves its temp file
    # `.svc.zip.<random>.tmp` in the source directory, and the next package bundled it
    # (seen: 25 MB of a broken zip in every later generation).
    src = _service_src(tmp_path)
    partial = src / ".s-v1.zip.k3_9xq2a.tmp"
    partial.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    own = src / ".notes.tmp"  # not one of ours: bundled as any file
    own.write_text("keep")
    built = build_package(src, output=src / "s-v2.zip", generation="v2")
    with zipfile.ZipFile(built.path) as zf:
        names = zf.namelist()
    assert partial.name not in names
    assert own.name in names
    assert partial in built.skipped


def test_deploy_removes_the_temp_packages_of_killed_deploys(tmp_path: Path) -> None:
    # `deploy` packages into $TMPDIR/lightnode-deploy-*/: killed (kill -9, a closed
    # ssh session), it left a zip as large as the service there, at every kill.
    stale = tmp_path / f"lightnode-deploy-{dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / "package.zip").write_bytes(b"\0" * 1000)
    live = tmp_path / f"lightnode-deploy-{os.getppid()}-live0001"
    live.mkdir()
    unknown = tmp_path / "lightnode-deploy-xyz"  # no pid in the name: not ours to judge
    unknown.mkdir()
    lifecycle_cli.remove_stale_deploy_dirs(tmp_path)
    assert not stale.exists()
    assert live.is_dir() and unknown.is_dir()


def test_deploy_names_its_temp_dir_after_its_pid(tmp_path: Path) -> None:
    src = _service_src(tmp_path)
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "lightnode", "init", str(data)], check=True, capture_output=True)
    stale = tmp_path / "tmp" / f"lightnode-deploy-{dead_pid()}-abcd1234"
    stale.mkdir(parents=True)
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    done = subprocess.run(
        [sys.executable, "-m", "lightnode", "deploy", str(src), "--data-dir", str(data), "--generation", "g1"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_create_and_delete_of_a_service_are_on_disk_when_answered(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # create_service wrote state.json and renamed the service in without a flush: a power
    # cut after "created" could leave services/<S>/ with an empty state.json (refused). A
    # delete's rename unflushed could bring the service back after "deleted".
    synced = record_fsyncs(monkeypatch)
    layer = ServiceLayer(data)
    layer.create_service("s")
    state = [i for i, p in enumerate(synced) if "/.state.json." in p or p.endswith("/state.json")]
    assert state and str(data.services_dir) in synced[state[0]:]
    assert json.loads(data.state_path("s").read_text()) == {"enabled": False, "mapping": {"entries": []}}
    synced.clear()
    layer.delete_service("s")
    assert str(data.services_dir) in synced


def test_an_import_killed_while_it_builds_its_env_is_imported_again_and_never_switched_to(
    tmp_path: Path, data: DataDir
) -> None:
    # The import installs the generation, then builds its code envs. Killed in between
    # (a pip download takes minutes), it left the generation in place without its env:
    # the same import was then refused ("already present"), and a switch to it answered
    # "switched" to a generation whose endpoints all answer 503.
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from lightnode.admin import service_layer\n"
        "from lightnode.services.store import DataDir\n"
        "service_layer.build_env_for_generation = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "layer = service_layer.ServiceLayer(DataDir(Path(sys.argv[1])), max_package_bytes=10485760)\n"
        "layer.import_archive('s', sys.argv[2])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(data.root), str(archive)],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert data.generation_dir("s", "g1").is_dir()  # what the kill left
    layer = ServiceLayer(data, max_package_bytes=LIMIT)
    with pytest.raises(LightnodeError) as refused:
        layer.switch_to("s", "g1")
    assert "import the package again" in refused.value.message
    answer = layer.import_archive("s", archive)
    assert answer["generation"] == "g1"
    assert sorted(p.name for p in data.generation_dir("s", "g1").iterdir()) == [
        "e.py", "lightnode-package.json", "service.json"]
    assert sorted(p.name for p in data.services_dir.iterdir()) == ["s"]
    assert layer.switch_to("s", "g1")["switchedToGeneration"] == "g1"


def test_an_import_in_progress_is_not_taken_for_a_killed_one(tmp_path: Path, data: DataDir) -> None:
    # While one import builds its env, the same generation imported again is refused as
    # present, and a switch to it waits for the env: neither takes it for abandoned.
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    layer = ServiceLayer(data, max_package_bytes=LIMIT)
    seen: list[str] = []

    def build(*args: object, **kwargs: object) -> list[object]:
        with pytest.raises(PackageRefused) as again:
            layer.import_archive("s", archive)
        seen.append(str(again.value))
        with pytest.raises(LightnodeError) as switch:
            layer.switch_to("s", "g1")
        seen.append(switch.value.message)
        return []

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service_layer, "build_env_for_generation", build)
        layer.import_archive("s", archive)
    assert "already present" in seen[0]
    assert "not fully imported" in seen[1]
    assert layer.switch_to("s", "g1")["switchedToGeneration"] == "g1"


def test_build_env_completes_an_import_killed_before_its_envs(tmp_path: Path, data: DataDir) -> None:
    archive = tmp_path / "g1.zip"
    archive.write_bytes(package_bytes("g1"))
    imported = import_package(data, "s", archive, max_bytes=LIMIT, pending=True)
    (imported.path / package.PENDING_FILE).write_text(f"{dead_pid()}\n")  # its importer was killed
    package.import_given_up(imported)
    layer = ServiceLayer(data, max_package_bytes=LIMIT)
    layer.build_envs("s", "g1")
    assert layer.switch_to("s", "g1")["switchedToGeneration"] == "g1"


def _no_space(*args: object, **kwargs: object) -> None:
    # write() and fsync() on a full disk: an OSError without a file name
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of a file on a full disk (the page cache took the write): ENOSPC, no file name.
    Directories are flushed by a helper that ignores errors."""
    from lightnode.config import load

    monkeypatch.setattr(load.os, "fsync", _no_space)


def test_a_full_disk_refusing_keys_json_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen: `keys create` on a full disk said only "[Errno 28] No space left on device"
    # (the admin API: "No space left on device"): which file, which disk?
    from lightnode.admin import keys

    store = keys.KeyStore(tmp_path / "config" / "keys.json")
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as full:
        store.create(admin=True)
    assert full.value.filename == str(store.path)
    assert full.value.errno == errno.ENOSPC
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []  # none left


def test_a_full_disk_refusing_state_json_names_it(data: DataDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightnode.services.store import ServiceState

    _full_disk(monkeypatch)
    with pytest.raises(OSError) as full:
        data.write_state("s", ServiceState(False))
    assert full.value.filename == str(data.state_path("s"))


def test_a_full_disk_refusing_a_tuning_posted_to_the_admin_api_names_the_file(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `admin tune --url` posts the tuning to .../settings: on a full disk it answered
    # "No space left on device" alone, where `tune --data-dir` names the file.
    monkeypatch.setattr(service_layer, "write_endpoint_config", _no_space)
    with pytest.raises(LightnodeError) as full:
        ServiceLayer(data).set_endpoint_settings("s", "e", {"pool": {"ceil": 3}})
    path = data.endpoint_config_path("s", "e")
    assert full.value.message == f"cannot write {path}: No space left on device"


def test_init_flushes_the_sample_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `lightnode init` (and a first start) copied the sample without a flush: a power cut
    # right after could leave services/demo/ with empty code or service.json.
    synced = record_fsyncs(monkeypatch)
    data = DataDir(tmp_path / "data")
    data.init_sample()
    flushed = {p.rsplit("/generations/v1/", 1)[1] for p in synced if "/generations/v1/" in p}
    generation = data.generation_dir("demo", "v1")
    assert {p.relative_to(generation).as_posix() for p in generation.rglob("*") if p.is_file()} <= flushed
    assert str(data.services_dir) in synced
