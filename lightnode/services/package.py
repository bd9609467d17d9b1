"""Service packages: building a zip from a source directory, and importing one safely (SPEC §6).

`build_package` validates SRC_DIR/service.json, then zips the code and the
contents of every managed folder. A folder outside SRC_DIR is bundled under
`_folders/<name>/` and the service.json inside the zip points at that copy,
so a package is self-contained. The zip's root holds lightnode-package.json.
Earlier packages found in the tree are left out: `lightnode package .` writes
its zip into the source directory, and each package would otherwise carry all
the ones before it (a size that doubles with every build). The zip is created
with the umask's permissions, like any file: a node running as another user
reads the file that `admin import --url` names.

`import_package` unpacks an archive into `services/<S>/generations/<G>/` or
refuses it whole. The members of the zip's central directory are counted
before zipfile loads it (it builds one object per member, so a small zip of
millions of empty members would otherwise cost the importer, the node itself
for the admin API, gigabytes). Every member is checked before anything is
written (no "..", no absolute name, no link or special file, no duplicate,
declared sizes within `max_bytes`); then members are extracted into a hidden
staging directory `services/.import-<pid>-*` while the bytes actually written
are counted (declared sizes can lie), the unpacked service.json is validated,
every file and directory staged is flushed to disk (fsync), and one rename puts
the generation (or the whole new service) in place, itself flushed by an fsync
of the directory that received it: an import reported done survives a power
cut whole, and one cut short leaves at most a hidden staging directory. On
any refusal the staging directory is removed: nothing is left behind. An
import killed half way (kill -9, the OOM killer) cannot remove its own: the
next import removes every staging directory whose process is gone, or that
bears this very process's pid without being one of its imports in progress
(in a container the restarted node gets the pid of the one killed). It also
removes the graveyards `services/.deleted-*` that a delete killed half way
left (the admin layer renames what it deletes there, then removes it).

An import that has more to do once the generation is in place (the admin layer
builds its code envs there) asks for a pending mark: the file
`.lightnode-import-pending` (the importer's pid) in the generation, removed by
`import_done`. A generation still marked whose importer is gone was cut short
by a kill: `import_package` of the same generation replaces it (unless a
mapping names it), and `import_pending` tells the admin layer not to switch to
it.

Imports: standard library, `lightnode.errors`, `lightnode.config.model`,
`lightnode.services.model`, `lightnode.services.store`. Never the scheduler,
HTTP or worker layers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from lightnode.config.model import check_id, is_valid_id
from lightnode.errors import ConfigError
from lightnode.services.model import SERVICE_FILE, load_service_dir
from lightnode.services.store import (
    PACKAGE_FILE,
    DataDir,
    ServiceState,
    flush_directory,
    flush_tree,
)

# Where folders from outside SRC_DIR are bundled inside the package.
EXTERNAL_FOLDERS_DIR = "_folders"

# Never bundled: version-control metadata, caches and bytecode. They are large,
# machine-specific, and Python rebuilds bytecode on the node.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
SKIPPED_FILES = frozenset({".DS_Store"})

# An archive with more members than this is refused: each member costs an inode
# and a syscall or two, and a real service package has a few thousand at most.
MAX_PACKAGE_MEMBERS = 100_000

# A member nested deeper than this is refused: unpacking, flushing and removing a
# tree recurse once per level (pathlib's mkdir, os.walk, shutil.rmtree), and a name
# like "d/d/d/.../f" a thousand deep would end the import in a RecursionError (a
# traceback, a 500 from the admin API) instead of a refusal. Real trees are a few
# dozen deep.
MAX_MEMBER_DEPTH = 256

# A refusal names at most this many members at fault (then says how many more), each
# name cut to about SHOWN_NAME_CHARS characters.
MAX_LISTED_MEMBERS = 20
SHOWN_NAME_CHARS = 120

# lightnode-package.json is tiny; a larger one is not ours.
MAX_MANIFEST_BYTES = 64 * 1024

# Extraction copies members in chunks of this size, checking the running total
# against the limit after each one.
COPY_CHUNK_BYTES = 1024 * 1024

# Hidden staging directories of imports under services/: `.import-<pid>-<random>`.
STAGING_PREFIX = ".import-"
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-")
# What is being deleted under services/: `.deleted-<S>-...` (admin.service_layer renames a
# service or generation there, then removes it). Nothing reads it: any left is debris.
GRAVEYARD_PREFIX = ".deleted-"
# The staging directories of this process's imports in progress (the node runs admin
# imports in threads), so that its own pid does not make a dead import's look alive.
_ACTIVE_STAGING: set[str] = set()
_ACTIVE_STAGING_LOCK = threading.Lock()

# In a generation whose import has not finished (its code envs being built): the importer's pid.
PENDING_FILE = ".lightnode-import-pending"
# Generation directories whose import runs in this process, still pending.
_PENDING_IMPORTS: set[str] = set()

# The temporary file `_write_zip` writes a package to (`.<out name>.<mkstemp's 8>.tmp`,
# beside it): one left by a killed `lightnode package` must not be bundled by the next.
_PARTIAL_PACKAGE = re.compile(r"\..+\.zip\.[a-z0-9_]{8}\.tmp", re.IGNORECASE)

_DRIVE = re.compile(r"^[A-Za-z]:")


class PackageRefused(ConfigError):
    """A package cannot be built or an archive cannot be imported; nothing was written.

    `source` is the archive or source directory; `problems` lists every reason.
    """


class PackageNotWritten(PackageRefused):
    """An import the node could not write to its disk: nothing was written, and the
    archive is not at fault (`STORAGE_ERRNOS`). The admin API answers 500, not a
    refusal's 400: a client must not take a full disk for a bad package, and may send
    the same archive again once space is freed."""


# Failures of a write that say nothing of what was written: a full disk or quota, an
# I/O error, a file system mounted read-only. Other errors of an unpacking (a name too
# long, a member the file system cannot hold) refuse the archive.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _not_unpacked(source: str, problem: str, exc: OSError) -> PackageRefused:
    """The refusal for an OSError of the unpacking: PackageNotWritten for a storage failure."""
    cls = PackageNotWritten if exc.errno in STORAGE_ERRNOS else PackageRefused
    return cls(source, [f"{problem}: {exc.strerror or exc}"])


@dataclass(frozen=True, slots=True)
class BuiltPackage:
    path: Path
    service_id: str
    generation: str
    files: int
    skipped: tuple[Path, ...] = ()  # earlier packages found in the tree, not bundled
    # (link, its target) for each symbolic link of SRC_DIR whose target lies outside it:
    # bundled all the same, and said (a link to ~/.aws would ship credentials).
    outside_links: tuple[tuple[Path, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ImportedPackage:
    service_id: str
    generation: str
    path: Path  # the generation directory
    created_service: bool
    unpacked_bytes: int


def default_generation(now: datetime | None = None) -> str:
    """`v` + the UTC time, e.g. `v20261127-041500` (SPEC §6)."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return "v" + moment.strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------- build


def build_package(
    src_dir: Path,
    *,
    output: Path | None = None,
    generation: str | None = None,
    now: datetime | None = None,
) -> BuiltPackage:
    """Validate `src_dir` and write its package.

    Args:
        src_dir: a directory holding service.json and the code.
        output: the zip to write (default `./<service>-<generation>.zip`).
        generation: the generation id (default `default_generation(now)`).
        now: the creation time (default: now, UTC).

    Raises:
        ConfigError: service.json is invalid (file and JSON path of each fault).
        IdError: `generation` is not a valid id.
        PackageRefused: a file of the source cannot be bundled.
        OSError: the output cannot be written.
    """
    src = Path(os.path.abspath(src_dir))
    definition = load_service_dir(src)  # ConfigError: file + JSON path of every fault
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    generation = check_id(generation or default_generation(created), "generation id")
    out = Path(os.path.abspath(output or f"{definition.id}-{generation}.zip"))
    raw = json.loads((src / SERVICE_FILE).read_text(encoding="utf-8"))
    external = _bundle_external_folders(raw, src)
    manifest = {
        "service": definition.id,
        "generation": generation,
        "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    outside: list[tuple[Path, str]] = []
    members = list(_walk(src, "", skip={out}, outside=outside))
    for arc_dir, folder in external.items():
        members.extend(_walk(Path(folder), arc_dir, skip={out}, outside=outside))
    skipped = tuple(p for _, p in members if p is not None and (_is_package(p) or is_partial_package(p)))
    members = [(name, p) for name, p in members if p is None or p not in skipped]
    _write_zip(out, members, raw, manifest, rewritten=bool(external))
    files = sum(1 for _, p in members if p)
    return BuiltPackage(out, definition.id, generation, files, skipped, tuple(outside))


def is_partial_package(path: Path) -> bool:
    """The temporary file of a package being written, or of one whose `lightnode package`
    was killed (it is never renamed to its name then)."""
    return _PARTIAL_PACKAGE.fullmatch(path.name) is not None


def _is_package(path: Path) -> bool:
    """A lightnode package (a zip with lightnode-package.json at its root), as this
    module writes them: a zip of the service's own data is not one."""
    if not path.name.lower().endswith(".zip"):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            zf.getinfo(PACKAGE_FILE)
    except (KeyError, OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return False
    return True


def _bundle_external_folders(raw: dict[str, Any], src: Path) -> dict[str, str]:
    """Point every managed folder outside `src` at a bundled copy.

    Rewrites `raw` (the decoded service.json) in place and returns
    {archive directory: absolute source folder}. Folders inside `src`
    are part of the tree walk already; absolute ones are made relative.
    """
    bundled: dict[str, str] = {}  # absolute folder -> archive dir
    prefix = _unused_name(src, EXTERNAL_FOLDERS_DIR)
    for endpoint in raw.get("endpoints", []):
        folders = endpoint.get("folders") or []
        for index, folder in enumerate(folders):
            resolved = os.path.normpath(os.path.join(src, folder))
            if _is_inside(resolved, src):
                folders[index] = Path(resolved).relative_to(src).as_posix() or "."
                continue
            if resolved not in bundled:
                taken = set(bundled.values())
                name = os.path.basename(resolved) or "folder"
                arc = f"{prefix}/{name}"
                suffix = 2
                while arc in taken:
                    arc = f"{prefix}/{name}-{suffix}"
                    suffix += 1
                bundled[resolved] = arc
            folders[index] = bundled[resolved]
    return {arc: folder for folder, arc in bundled.items()}


def _unused_name(src: Path, base: str) -> str:
    name, suffix = base, 2
    while os.path.lexists(src / name):
        name = f"{base}{suffix}"
        suffix += 1
    return name


def _is_inside(path: str, root: Path) -> bool:
    try:
        return os.path.commonpath([path, str(root)]) == str(root)
    except ValueError:
        return False


def _walk(
    root: Path, arc_root: str, *, skip: set[Path], outside: list[tuple[Path, str]]
) -> list[tuple[str, Path | None]]:
    """(archive name, file path) for every file, (archive dir name + "/", None) for every dir.

    Symbolic links are followed (their target is bundled as a regular file or
    directory: a link to a shared model is how a tree points at it); a directory
    reached twice through links is walked once. Each link whose target lies outside
    `root` is added to `outside` with its target, for the command to say: what it
    bundles is not in the tree its author reviewed.
    """
    found: list[tuple[str, Path | None]] = []
    if arc_root:
        found.append((arc_root + "/", None))
    seen: set[str] = set()
    real_root = os.path.realpath(root)

    def note_link(path: Path) -> None:
        if path.is_symlink():
            target = os.path.realpath(path)
            if not _is_inside(target, Path(real_root)):
                outside.append((path, target))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        rel = Path(dirpath).relative_to(root).as_posix()
        base = "/".join(p for p in (arc_root, "" if rel == "." else rel) if p)
        for name in dirnames:
            note_link(Path(dirpath) / name)
            found.append((f"{base}/{name}/" if base else f"{name}/", None))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name in SKIPPED_FILES or name.endswith(SKIPPED_SUFFIXES) or path in skip:
                continue
            if not path.exists():
                raise PackageRefused(str(root), [f"{path}: broken symbolic link"])
            if not path.is_file():
                continue  # sockets, fifos, devices: not part of a service
            note_link(path)
            found.append((f"{base}/{name}" if base else name, path))
    return found


def _write_zip(
    out: Path,
    members: list[tuple[str, Path | None]],
    service_json: dict[str, Any],
    manifest: dict[str, str],
    *,
    rewritten: bool,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    created_time = _zip_time(manifest["created"])
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from a node of another user
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False) as zf:
            for name, path in members:
                if name in (PACKAGE_FILE,) or (rewritten and name == SERVICE_FILE):
                    continue
                if path is None:
                    info = zipfile.ZipInfo(name, date_time=created_time)
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10  # MS-DOS directory bit
                    zf.writestr(info, b"")
                else:
                    zf.write(path, name)
            if rewritten:
                zf.writestr(SERVICE_FILE, json.dumps(service_json, indent=2) + "\n")
            zf.writestr(PACKAGE_FILE, json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask. Linux shows it in /proc (no window where another thread
    would create files with a changed one); elsewhere it is read by setting it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _zip_time(created: str) -> tuple[int, int, int, int, int, int]:
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return (max(moment.year, 1980), moment.month, moment.day, moment.hour, moment.minute, moment.second)


# --------------------------------------------------------------------- import


def member_problem(name: str) -> str | None:
    """Why an archive member name is unsafe, or None if it stays inside the target."""
    if not name or name in ("/", "./"):
        return "empty name"
    if "\x00" in name:
        return "NUL character in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if ".." in parts:
        return "path traversal (..)"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' path component"
    if len(parts) > MAX_MEMBER_DEPTH:
        return f"nested {len(parts) - 1} directories deep: more than {MAX_MEMBER_DEPTH - 1}"
    return None


def _member_kind_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file (device, fifo or socket)"
    if info.flag_bits & 0x1:
        return "encrypted"
    return None


def check_archive(zf: zipfile.ZipFile, *, max_bytes: int) -> list[str]:
    """Every reason to refuse `zf` that its directory shows (names, kinds, declared sizes).

    The members at fault are named up to MAX_LISTED_MEMBERS, then counted: a package
    of 90,000 members named "../..." would otherwise be refused in a message of tens
    of megabytes, printed, answered by the admin API and written to the audit log.
    """
    problems: list[str] = []
    faults: list[str] = []  # one line per member at fault
    infos = zf.infolist()
    if len(infos) > MAX_PACKAGE_MEMBERS:
        problems.append(f"{len(infos)} members: more than {MAX_PACKAGE_MEMBERS}")
    seen: set[str] = set()
    files: dict[str, str] = {}  # path -> the member that is a file there
    directories: dict[str, str] = {}  # path -> the first member that needs a directory there
    declared = 0
    for info in infos:
        name = info.filename
        reason = member_problem(name) or _member_kind_problem(info)
        if reason is not None:
            faults.append(f"member {_shown(name)}: {reason}")
            continue
        key = name.rstrip("/")
        if key in seen:
            faults.append(f"member {_shown(name)}: appears twice")
        seen.add(key)
        parts = key.split("/")
        for depth in range(1, len(parts)):
            directories.setdefault("/".join(parts[:depth]), name)
        if not info.is_dir():
            declared += info.file_size
            files.setdefault(key, name)
    # `a` and `a/b` cannot both be unpacked: one path cannot be a file and a directory.
    for key, name in files.items():
        needs = directories.get(key)
        if needs is not None:
            faults.append(f"member {_shown(name)}: a file where member {_shown(needs)} needs a directory")
    problems.extend(faults[:MAX_LISTED_MEMBERS])
    if len(faults) > MAX_LISTED_MEMBERS:
        problems.append(f"... and {len(faults) - MAX_LISTED_MEMBERS} more members refused")
    if declared > max_bytes:
        problems.append(f"unpacks to {declared} bytes: more than limits.max_package_bytes ({max_bytes})")
    if PACKAGE_FILE not in seen:
        problems.append(f"no {PACKAGE_FILE} at the root: not a lightnode package")
    if SERVICE_FILE not in seen:
        problems.append(f"no {SERVICE_FILE} at the root")
    return problems


def _shown(name: str) -> str:
    """A member name for a message: quoted, and cut in its middle past SHOWN_NAME_CHARS
    (a zip name may be 64 KiB long)."""
    if len(name) > SHOWN_NAME_CHARS:
        half = SHOWN_NAME_CHARS // 2
        return f"{name[:half]!r}...{name[-half:]!r} ({len(name)} characters)"
    return repr(name)


def read_manifest(zf: zipfile.ZipFile, source: str) -> dict[str, Any]:
    """The validated lightnode-package.json of an archive.

    Raises:
        PackageRefused: missing, too large, not JSON, or without a valid generation id.
    """
    try:
        info = zf.getinfo(PACKAGE_FILE)
    except KeyError:
        raise PackageRefused(source, [f"no {PACKAGE_FILE} at the root: not a lightnode package"]) from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise PackageRefused(source, [f"{PACKAGE_FILE}: larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        with zf.open(info) as handle:
            raw = json.loads(handle.read(MAX_MANIFEST_BYTES + 1))
    except (ValueError, zipfile.BadZipFile, zlib.error, OSError) as exc:
        raise PackageRefused(source, [f"{PACKAGE_FILE}: unreadable: {exc}"]) from None
    except RecursionError:  # "[[[[...": json.loads recurses once per level
        raise PackageRefused(source, [f"{PACKAGE_FILE}: invalid JSON (nested too deeply)"]) from None
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise PackageRefused(source, [f"{PACKAGE_FILE}: must be a JSON object"])
    if not is_valid_id(raw.get("generation")):
        problems.append(f"{PACKAGE_FILE}: generation: invalid generation id {raw.get('generation')!r}")
    if not isinstance(raw.get("service"), str):
        problems.append(f"{PACKAGE_FILE}: service: must be a string")
    if problems:
        raise PackageRefused(source, problems)
    return raw


def import_package(
    data_dir: DataDir, service_id: str, archive: Path, *, max_bytes: int, pending: bool = False
) -> ImportedPackage:
    """Unpack `archive` as a new generation of `service_id`, or refuse it whole.

    The service is created (disabled, no mapping) when it does not exist.

    Args:
        data_dir: the node's data directory.
        service_id: the service to import into.
        archive: a zip written by `build_package`.
        max_bytes: `limits.max_package_bytes`: most bytes the package may unpack to.
        pending: install the generation with a pending mark, for the caller to
            remove with `import_done` once its own part (code envs) is done.

    Raises:
        IdError: invalid service id.
        PackageRefused: an unsafe or invalid archive, or a generation already
            present (one whose import was killed half way is replaced, unless a
            mapping names it); nothing was written.
        PackageNotWritten: the disk refused a write (STORAGE_ERRNOS); nothing was left.
        OSError: another failure of the node's own files (its services directory).
    """
    check_id(service_id, "service id")
    source = str(archive)
    try:
        with open(archive, "rb") as handle:
            members = count_members(handle, stop_after=MAX_PACKAGE_MEMBERS)
        if members is not None and members > MAX_PACKAGE_MEMBERS:
            raise PackageRefused(source, [f"has more than {MAX_PACKAGE_MEMBERS} members"])
        zf = zipfile.ZipFile(archive)
    # ValueError: a name flagged UTF-8 that is not (UnicodeDecodeError), and the like.
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise PackageRefused(source, [f"not a readable zip archive: {exc}"]) from None
    with zf:
        problems = check_archive(zf, max_bytes=max_bytes)
        if problems:
            raise PackageRefused(source, problems)
        generation = str(read_manifest(zf, source)["generation"])
        target = data_dir.generation_dir(service_id, generation)
        if os.path.lexists(target):
            _take_out_abandoned(data_dir, service_id, generation, source)
        data_dir.services_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(data_dir.services_dir)
        with _ACTIVE_STAGING_LOCK:
            staging = Path(
                tempfile.mkdtemp(dir=data_dir.services_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-")
            )
            _ACTIVE_STAGING.add(staging.name)
        installed = False
        try:
            staged_gen = staging / "service" / "generations" / generation
            unpacked = _extract(zf, staged_gen, max_bytes=max_bytes, source=source)
            _validate_unpacked(staged_gen, source)
            created = _install(data_dir, service_id, generation, staging, source, pending=pending)
            installed = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with _ACTIVE_STAGING_LOCK:
                _ACTIVE_STAGING.discard(staging.name)
                if not installed:
                    _PENDING_IMPORTS.discard(str(target))
    return ImportedPackage(service_id, generation, target, created, unpacked)


# The fixed part of a central directory header: signature, then the lengths of the
# name, extra field and comment at offsets 28, 30 and 32 (APPNOTE 4.3.12).
_CENTRAL_HEADER = struct.Struct("<4s24xHHH12x")
_CENTRAL_SIGNATURE = b"PK\x01\x02"


def count_members(handle: IO[bytes], *, stop_after: int) -> int | None:
    """How many members the zip's central directory holds, read without loading it.

    Walks the directory header by header (the end record's count may lie: zipfile
    ignores it too) and stops after `stop_after` + 1. None when the file is not
    a zip, or its directory is damaged: then zipfile itself says why.
    """
    endrec = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # zipfile's own locator
    if not endrec:
        return None
    size_cd, offset_cd, location = endrec[5], endrec[6], endrec[9]  # _ECD_SIZE, _ECD_OFFSET, _ECD_LOCATION
    start = location - size_cd  # as zipfile computes it, also for data prepended to the zip
    if endrec[0] == b"PK\x06\x06":  # zip64: its end record and locator sit before the plain one
        start -= 56 + 20
    if start < 0 or offset_cd < 0:
        return None
    handle.seek(start)
    count = read = 0
    while read < size_cd and count <= stop_after:
        header = handle.read(_CENTRAL_HEADER.size)
        if len(header) != _CENTRAL_HEADER.size:
            return None
        signature, name, extra, comment = _CENTRAL_HEADER.unpack(header)
        if signature != _CENTRAL_SIGNATURE:
            return None
        skip = name + extra + comment
        if len(handle.read(skip)) != skip:
            return None
        read += _CENTRAL_HEADER.size + skip
        count += 1
    return count


def remove_stale_staging(services_dir: Path) -> None:
    """Remove what imports and deletes killed half way left under `services_dir`: the
    staging directories of imports whose process is gone (or that bear this process's
    pid but are none of its imports in progress: a restarted node may get the pid of
    the one killed), and every delete's graveyard (`.deleted-*`). Another process
    removing a graveyard at the same time is harmless: both ignore what is gone."""
    try:
        with os.scandir(services_dir) as entries:
            names = [e.name for e in entries if e.name.startswith((STAGING_PREFIX, GRAVEYARD_PREFIX))]
    except OSError:
        return
    own = os.getpid()
    stale: list[str] = []
    with _ACTIVE_STAGING_LOCK:  # a name judged here cannot become an import in progress later
        for name in names:
            if name.startswith(GRAVEYARD_PREFIX):
                stale.append(name)
                continue
            match = _STAGING.match(name)
            if match is None:
                continue  # a name not ours
            pid = int(match.group(1))
            if pid == own:
                if name not in _ACTIVE_STAGING:
                    stale.append(name)
            elif not process_alive(pid):
                stale.append(name)
    for name in stale:
        shutil.rmtree(services_dir / name, ignore_errors=True)


def bury(path: Path, services_dir: Path, tag: str, *, flush: Path | None = None) -> None:
    """Remove `path` (a service or generation directory under `services_dir`) in one rename
    into a graveyard `services_dir/.deleted-<tag>-<random>`, then delete that: readers see
    it whole or gone, never half removed, and a kill half way leaves only a graveyard,
    removed by `remove_stale_staging`. `flush`: a directory to fsync after the rename.

    Raises:
        OSError: the rename failed; nothing changed.
    """
    graveyard = services_dir / f"{GRAVEYARD_PREFIX}{tag}-{os.urandom(4).hex()}"
    os.rename(path, graveyard)
    if flush is not None:
        flush_directory(flush)
    shutil.rmtree(graveyard, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user's counts, as does a value that
    is no pid): the owner of a directory named after it may still be at work."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid: leave it
    return True


def _extract(zf: zipfile.ZipFile, dest: Path, *, max_bytes: int, source: str) -> int:
    """Write every member under `dest`, counting the bytes really written."""
    dest.mkdir(parents=True)
    written = 0
    for info in zf.infolist():
        path = dest / info.filename
        mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:  # check_archive refused what it can see; any other failure is still a refusal
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, mode)
            with os.fdopen(fd, "wb") as out, zf.open(info) as member:
                while chunk := member.read(COPY_CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise PackageRefused(
                            source,
                            [f"unpacks to more than limits.max_package_bytes ({max_bytes}) bytes"],
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as exc:
            raise PackageRefused(source, [f"member {_shown(info.filename)}: unreadable: {exc}"]) from None
        except OSError as exc:
            raise _not_unpacked(source, f"member {_shown(info.filename)}: cannot unpack", exc) from None
    return written


def _validate_unpacked(generation_dir: Path, source: str) -> None:
    try:
        load_service_dir(generation_dir)
    except ConfigError as exc:
        # The staging path means nothing to the operator: name the archive.
        raise PackageRefused(f"{source}: {SERVICE_FILE}", exc.problems) from None


def import_pending(generation_dir: Path) -> bool | None:
    """Whether the generation's import has not finished: None when it has (or it is no
    import's), True while its importer runs, False when that importer is gone (killed)."""
    try:
        text = (generation_dir / PENDING_FILE).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return True  # unreadable: not ours to judge
    try:
        pid = int(text.strip())
    except ValueError:
        return False  # torn: its importer never finished writing it
    if pid == os.getpid():
        with _ACTIVE_STAGING_LOCK:
            return str(generation_dir) in _PENDING_IMPORTS
    return process_alive(pid)


def import_done(imported: ImportedPackage) -> None:
    """Remove the pending mark of an import made with `pending=True`: it is complete."""
    with _ACTIVE_STAGING_LOCK:
        _PENDING_IMPORTS.discard(str(imported.path))
    (imported.path / PENDING_FILE).unlink(missing_ok=True)
    flush_directory(imported.path)


def import_given_up(imported: ImportedPackage) -> None:
    """Forget an import made with `pending=True` that the caller took out again."""
    with _ACTIVE_STAGING_LOCK:
        _PENDING_IMPORTS.discard(str(imported.path))


def _take_out_abandoned(data_dir: DataDir, service_id: str, generation: str, source: str) -> None:
    """Remove a present generation whose import was killed half way, so that the same
    package imports again; or refuse, as for any generation present.

    Raises:
        PackageRefused: the generation is present and complete, its import still runs,
            or a mapping names it (replacing files a node may serve is not an import's).
    """
    target = data_dir.generation_dir(service_id, generation)
    present = f"generation {generation} of service {service_id} is already present"
    state = import_pending(target)
    if state is None:
        raise PackageRefused(source, [present])
    if state:
        raise PackageRefused(source, [f"{present}: its import is still running"])
    try:
        mapped = generation in {e.generation for e in data_dir.read_state(service_id).entries}
    except ConfigError:
        mapped = True  # unknown: keep it
    if mapped:
        raise PackageRefused(source, [
            f"{present}, half imported (its import was killed before its code envs were built)"
            f" and named by the service's mapping: `lightnode admin build-env {service_id} {generation}`"
            " completes it"
        ])
    try:
        bury(target, data_dir.services_dir, f"{service_id}-{generation}", flush=target.parent)
    except OSError as exc:
        raise _not_unpacked(source, f"{present}, half imported, and cannot be replaced", exc) from None


def _install(
    data_dir: DataDir, service_id: str, generation: str, staging: Path, source: str, *, pending: bool = False
) -> bool:
    """Move the staged generation into place; True when the service was created."""
    staged_service = staging / "service"
    staged_gen = staged_service / "generations" / generation
    _stamp_import_time(staged_gen)
    if pending:
        (staged_gen / PENDING_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        with _ACTIVE_STAGING_LOCK:
            _PENDING_IMPORTS.add(str(data_dir.generation_dir(service_id, generation)))
    service_dir = data_dir.service_dir(service_id)
    created_service = not os.path.lexists(service_dir)
    if created_service:
        state = ServiceState(enabled=False, entries=())
        (staged_service / "state.json").write_text(json.dumps(state.to_json(), indent=2) + "\n")
    _flush_tree(staged_service, source)
    if created_service:
        try:
            os.rename(staged_service, service_dir)
            flush_directory(data_dir.services_dir)
            return True
        except OSError:
            if not os.path.lexists(service_dir):
                raise
            # created meanwhile by someone else: add the generation to it
    generations = data_dir.generations_dir(service_id)
    if not generations.is_dir():
        generations.mkdir(parents=True, exist_ok=True)
        flush_directory(service_dir)
    target = generations / generation
    if os.path.lexists(target):
        raise PackageRefused(source, [f"generation {generation} of service {service_id} is already present"])
    try:
        os.rename(staged_gen, target)
    except OSError as exc:
        raise _not_unpacked(source, f"cannot install generation {generation}", exc) from None
    flush_directory(generations)
    return False


def _flush_tree(root: Path, source: str) -> None:
    """fsync every file, then every directory, under `root` (`store.flush_tree`).

    Unflushed, the files of an import that answered done may be lost to a power cut
    in the seconds after it, while the rename that installed them survives: a
    generation in place with empty files (ext4 writes data back after the metadata).

    Raises:
        PackageNotWritten: a file cannot be flushed (a full disk or an I/O error that
            only shows now, as on NFS).
    """
    try:
        flush_tree(root)
    except OSError as exc:
        where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else root.name
        raise PackageNotWritten(source, [f"cannot write {where} to disk: {exc.strerror or exc}"]) from None


def _stamp_import_time(generation_dir: Path) -> None:
    """The import time is the mtime of lightnode-package.json (see `imported_at`)."""
    now = datetime.now(timezone.utc).timestamp()
    os.utime(generation_dir / PACKAGE_FILE, (now, now))
    os.utime(generation_dir, (now, now))
