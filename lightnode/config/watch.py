"""Noticing changes under DATA_DIR/config and DATA_DIR/services (SPEC §1, §5).

Owns `ConfigWatcher`: a snapshot of the files that matter, a diff of that
snapshot against the disk (`scan`), and the loop that runs a scan on every file
event and at least every `poll_interval_s` (`run`). It reports what changed as
frozen `Change` values and never touches a pool: applying a change is the
daemon's job.

What the snapshot holds, and why:
- tuning files `config/services/S/E.json`: a hash of the bytes, read through
  symlinks. Content (not mtime) is compared, which catches in-place writes,
  atomic renames and the Kubernetes ConfigMap layout, where `E.json` links to
  `..data/E.json` and the kubelet swaps the `..data` link to a new timestamped
  directory. Names starting with "." and non-.json names are ignored, so the
  kubelet's directories and our own temp files never show up.
  A file is read again only when its stat (through symlinks: device, inode,
  size, mtime, ctime) differs from the one it had when last read, or when that
  read came less than SETTLED_S after its last change (ctime): a second write in
  the same clock tick would leave the stat as it was. Any write moves ctime,
  which no tool can set back. Reading every file and listing every directory at
  every scan cost a node of 40 services and 200 endpoints 15-20 ms of its event
  loop each second, idle or not: a stall of every request, growing with the
  endpoints. SIGHUP still lists and reads everything (an NFS client's cached
  attributes may hide a change made on another host for a few seconds; a read
  would not).
- `config/keys.json`, `config/server.json`: a hash of the bytes.
- each `services/S/`: a cheap signature (state.json's stat, the generation
  names), never a walk of user code.
- the listing of each directory above, kept while the directory's stat stays
  the same and settled (as for a tuning file, above): an entry that comes, goes or is
  renamed changes its directory's mtime and ctime.
- the names in `code-envs/` (one per built env), so that an env built after an
  endpoint found it missing lets that endpoint start.

File events come from watchfiles, watching only the few directories above
(not recursively), so a large generation tree costs no inotify watches; also
the directory of a file a tuning file links to out of its own directory, and
DATA_DIR itself while config/ or services/ is missing. The
watch is restarted when that set of directories changes. The periodic scan is
the safety net for what events miss: filesystems without inotify, directories
created between a scan and a restart of the watch.

Imports: standard library, watchfiles, `lightnode.errors`, `lightnode.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import awatch

from lightnode.config.load import (
    config_dir,
    decode_endpoint_config,
    keys_path,
    server_settings_path,
    tuning_root,
)
from lightnode.config.model import EndpointConfig, is_valid_id
from lightnode.config.validate import MAX_CONFIG_FILE_BYTES, FileUnreadableNow, read_config_bytes
from lightnode.errors import ConfigError

logger = logging.getLogger("lightnode.config")


@dataclass(frozen=True, slots=True)
class TuningChanged:
    """A tuning file appeared or now holds different values (or SIGHUP re-read it)."""

    service_id: str
    endpoint_id: str
    config: EndpointConfig


@dataclass(frozen=True, slots=True)
class TuningRemoved:
    """A tuning file was deleted: defaults apply."""

    service_id: str
    endpoint_id: str


@dataclass(frozen=True, slots=True)
class TuningInvalid:
    """A tuning file was refused: the endpoint keeps its last good values."""

    service_id: str
    endpoint_id: str
    error: ConfigError


@dataclass(frozen=True, slots=True)
class ServiceFilesChanged:
    """Something in DATA_DIR/services/S changed (state.json, a generation), or S came or went."""

    service_id: str


@dataclass(frozen=True, slots=True)
class CodeEnvsChanged:
    """An env came or went in DATA_DIR/code-envs (`admin build-env`, an import)."""


@dataclass(frozen=True, slots=True)
class KeysChanged:
    """DATA_DIR/config/keys.json changed."""


@dataclass(frozen=True, slots=True)
class ServerSettingsChanged:
    """DATA_DIR/config/server.json changed; it applies at the next start."""


Change = (
    TuningChanged
    | TuningRemoved
    | TuningInvalid
    | ServiceFilesChanged
    | CodeEnvsChanged
    | KeysChanged
    | ServerSettingsChanged
)

# Upper bound, in ms, on the quiet period that ends a batch of file events (the
# step is min(debounce_ms, this)). A writer that truncates a file and then writes
# it makes several events; waiting for them to settle avoids reading a
# half-written file, while a short wait keeps the delay from write to report
# around 40-60 ms with the default debounce, well inside SPEC §5's one second.
MAX_STEP_MS = 50
# DATA_DIR/code-envs (services.store.DataDir.code_envs_dir): its entries are listed,
# the envs themselves never walked; names starting with "." (a build's staging
# directory, its lock) are ignored, so a build reports once, when its env is renamed in.
CODE_ENVS_DIR = "code-envs"

# A tuning file whose last change (ctime) is at least this old when it is read is
# "settled": its stat alone tells a later change. Well above any filesystem's
# timestamp granularity (ext4: a clock tick; FAT, some NFS servers: 1-2 s).
SETTLED_S = 2.0

_TuningKey = tuple[str, str]
# A directory watched for events, with its inode so a re-created one is noticed.
_WatchTarget = tuple[str, int]


@dataclass
class _TuningState:
    digest: bytes  # hash of the file's bytes, or of the read error
    config: EndpointConfig | None  # None: the last report was TuningInvalid
    # The file's stat when it was read, if it had settled then: while it stays the
    # same, the file is not read again. None: read it at the next scan.
    signature: tuple[int, ...] | None = None


@dataclass
class _Snapshot:
    tuning: dict[_TuningKey, _TuningState] = field(default_factory=dict)
    services: dict[str, tuple[object, ...]] = field(default_factory=dict)
    keys: bytes | None = None
    code_envs: tuple[str, ...] = ()  # the names in DATA_DIR/code-envs (built envs)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _read_digest(path: Path) -> bytes | None:
    """Hash of the file's bytes (through symlinks), None if it does not exist.

    A regular file over MAX_CONFIG_FILE_BYTES is not read: the hash is of its stat
    signature instead. keys.json may lawfully be that large (thousands of keys),
    and a constant "too large" hash would hide every later change of it, a revoked
    key included; the key store replaces it atomically, so each of its writes
    brings a new inode.
    """
    try:
        info = path.stat()
    except OSError:
        info = None  # absent, a dangling link...: the read below says which
    if info is not None and stat.S_ISREG(info.st_mode) and info.st_size > MAX_CONFIG_FILE_BYTES:
        signature = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        return _digest(f"\0large: {signature}".encode())
    try:
        data = read_config_bytes(path)
    except FileUnreadableNow:
        return NOT_READ_NOW
    except ConfigError as exc:
        return _digest(f"\0unreadable: {exc}".encode())
    return None if data is None else _digest(data)


# _read_digest's answer when the node could not read the file for want of descriptors
# or memory: nothing is known of the file, and the last digest stands.
NOT_READ_NOW = b"\0not read now"


class ConfigWatcher:
    """Snapshot diffs of the data directory, reported as `Change` lists.

    Args:
        data_dir: the node's DATA_DIR.
        on_changes: called by `run()` with each non-empty list of changes. It runs
            on the event loop; an exception it raises is logged, and the watch goes on.
        debounce_ms: longest time file events are grouped before a scan.
        poll_interval_s: a scan happens at least this often, events or not.
    """

    def __init__(
        self,
        data_dir: Path,
        on_changes: Callable[[list[Change]], None],
        *,
        debounce_ms: int = 30,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._data_dir = data_dir
        self._on_changes = on_changes
        self._debounce_ms = max(1, debounce_ms)
        self._step_ms = max(1, min(debounce_ms, MAX_STEP_MS))
        self._poll_interval_s = poll_interval_s
        self._snapshot: _Snapshot | None = None
        self._server_digest: bytes | None = None
        self._watch_targets: frozenset[_WatchTarget] = frozenset()
        self._warned: set[str] = set()
        # Directory listings by path, with the settled stat they were taken at: those
        # of the last scan, and those the running scan took or kept (see _scandir).
        self._listings: dict[str, tuple[tuple[int, ...], list[os.DirEntry[str]]]] = {}
        self._listed: dict[str, tuple[tuple[int, ...], list[os.DirEntry[str]]]] = {}
        self._forced = False

    @property
    def services_dir(self) -> Path:
        return self._data_dir / "services"

    # -- scanning -----------------------------------------------------------

    def scan(self) -> list[Change]:
        """Compare the tree with the last snapshot, keep the new one, return the changes.

        The first call reports every tuning file (TuningChanged or TuningInvalid),
        every service directory and keys.json if present, so the caller may use
        it as its initial load. server.json is only ever compared with what the
        first call saw. An invalid file is reported once per distinct content,
        and a rewrite that parses to the same values is not reported.
        """
        return self._scan(force=self._snapshot is None)

    def rescan_all(self) -> list[Change]:
        """SIGHUP: re-read everything and report every file as the first scan does.

        Files and services gone since the last scan are still reported as removed.
        """
        return self._scan(force=True)

    def _scan(self, *, force: bool) -> list[Change]:
        self._forced = force
        self._listed = {}
        try:
            return self._scan_tree(force)
        finally:
            self._listings, self._listed = self._listed, {}

    def _scan_tree(self, force: bool) -> list[Change]:
        first = self._snapshot is None
        old = self._snapshot or _Snapshot()
        targets: set[_WatchTarget] = set()
        changes: list[Change] = []
        for directory in (config_dir(self._data_dir), self.services_dir):
            # config/ holds server.json, keys.json and services/. Either directory
            # missing (removed by an operator, not yet created): watch DATA_DIR, so
            # that its re-creation is an event and not a wait for the periodic scan.
            if not _add_target(directory, targets):
                _add_target(self._data_dir, targets)

        # A file the node cannot read for want of descriptors (EMFILE) is as it was: a
        # change reported then was a false "server.json refused", and keys reloaded.
        server = _read_digest(server_settings_path(self._data_dir))
        if server == NOT_READ_NOW:
            self._warn_short_of_resources(server_settings_path(self._data_dir))
            server = self._server_digest
        if not first and server != self._server_digest:
            changes.append(ServerSettingsChanged())
        self._server_digest = server

        keys = _read_digest(keys_path(self._data_dir))
        if keys == NOT_READ_NOW:
            self._warn_short_of_resources(keys_path(self._data_dir))
            keys = old.keys
        if keys != old.keys or (force and keys is not None):
            changes.append(KeysChanged())

        services = self._scan_services(targets)
        for service_id in sorted(services.keys() | old.services.keys()):
            if force or services.get(service_id) != old.services.get(service_id):
                changes.append(ServiceFilesChanged(service_id))

        # An endpoint whose requirements env was not built has no pipelines: the env
        # built later (as its 503 advises) must let it start without a restart.
        code_envs_listed = self._list_dir(self._data_dir / CODE_ENVS_DIR, targets)
        if code_envs_listed is None:  # unreadable right now: keep what we knew
            code_envs = old.code_envs
        else:
            code_envs = tuple(entry.name for entry in code_envs_listed)
        if not first and code_envs != old.code_envs:
            changes.append(CodeEnvsChanged())

        tuning, tuning_changes = self._scan_tuning(old.tuning, force, targets)
        changes.extend(tuning_changes)

        self._snapshot = _Snapshot(tuning=tuning, services=services, keys=keys, code_envs=code_envs)
        self._watch_targets = frozenset(targets)
        return changes

    def _scan_tuning(
        self, old: dict[_TuningKey, _TuningState], force: bool, targets: set[_WatchTarget]
    ) -> tuple[dict[_TuningKey, _TuningState], list[Change]]:
        new: dict[_TuningKey, _TuningState] = {}
        changes: list[tuple[_TuningKey, Change]] = []
        root = tuning_root(self._data_dir)
        service_dirs = self._list_ids(root, "service", targets)
        if service_dirs is None:  # unreadable right now: keep what we knew
            return dict(old), []
        for service_id, service_dir in service_dirs:
            files = self._list_tuning_files(service_dir, targets)
            if files is None:
                new.update((k, v) for k, v in old.items() if k[0] == service_id)
                continue
            for endpoint_id, path in files:
                key = (service_id, endpoint_id)
                state, change = self._check_tuning_file(key, path, old.get(key), force)
                if state is not None:
                    new[key] = state
                if change is not None:
                    changes.append((key, change))
        changes.extend((key, TuningRemoved(*key)) for key in old.keys() - new.keys())
        changes.sort(key=lambda item: item[0])
        return new, [change for _, change in changes]

    def _check_tuning_file(
        self, key: _TuningKey, path: Path, previous: _TuningState | None, force: bool
    ) -> tuple[_TuningState | None, Change | None]:
        """(new state, change to report); state None if the file vanished meanwhile.

        The file is read unless its settled stat is the one it had at its last read
        (see the module docstring); the stat is taken before the read, so a change
        between the two is read at the next scan.
        """
        signature = _settled_signature(path)
        if previous is not None and not force and signature is not None and previous.signature == signature:
            return previous, None
        try:
            data = read_config_bytes(path)
        except FileUnreadableNow:
            self._warn_short_of_resources(path)
            return previous, None  # as it was: read again at the next scan (no signature kept)
        except ConfigError as exc:
            # Its state keeps no signature: a read error may pass (EMFILE, EIO) with the file as it is.
            digest = _digest(str(exc).encode())
            if previous is not None and previous.digest == digest and not force:
                return previous, None  # reported when it appeared
            return self._refused(key, digest, exc)
        if data is None:  # deleted since listed, or a dangling link
            return None, None
        digest = _digest(data)
        if previous is not None and previous.digest == digest and not force:
            return _TuningState(digest, previous.config, signature), None
        try:
            config = decode_endpoint_config(data, source=str(path))
        except ConfigError as exc:
            state, change = self._refused(key, digest, exc)
            state.signature = signature
            return state, change
        if previous is not None and previous.config == config and not force:
            return _TuningState(digest, config, signature), None  # same values, other bytes
        return _TuningState(digest, config, signature), TuningChanged(*key, config)

    def _refused(
        self, key: _TuningKey, digest: bytes, error: ConfigError
    ) -> tuple[_TuningState, Change]:
        # What stays in force (the last good values, or the defaults) is for the daemon to say.
        logger.warning("tuning file refused: %s", error)
        return _TuningState(digest, None), TuningInvalid(*key, error)

    def _scan_services(self, targets: set[_WatchTarget]) -> dict[str, tuple[object, ...]]:
        listed = self._list_ids(self.services_dir, "service", targets)
        if listed is None:
            return dict(self._snapshot.services) if self._snapshot else {}
        return {
            service_id: self._service_signature(service_dir, targets)
            for service_id, service_dir in listed
        }

    def _service_signature(self, service_dir: Path, targets: set[_WatchTarget]) -> tuple[object, ...]:
        """Changes when state.json is written or a generation comes or goes; cheap."""
        try:
            dir_inode = service_dir.stat().st_ino
        except OSError:
            return ("gone",)
        if _watchable(service_dir):
            targets.add((str(service_dir), dir_inode))
        generations_dir = service_dir / "generations"
        try:
            generations_inode, entries = self._scandir(generations_dir)
            generations = [(e.name, e.inode()) for e in entries]
            targets.add((str(generations_dir), generations_inode))
        except OSError:
            generations = []
        return (dir_inode, stat_signature(service_dir / "state.json"), tuple(generations))

    # -- directory listing --------------------------------------------------

    def _list_dir(
        self, directory: Path, targets: set[_WatchTarget]
    ) -> list[os.DirEntry[str]] | None:
        """Entries not starting with ".", by name; [] if absent, None if unreadable."""
        try:
            inode, entries = self._scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self._warn_once(f"cannot list {directory}: {exc}")
            return None
        targets.add((str(directory), inode))
        return entries

    def _scandir(self, directory: Path) -> tuple[int, list[os.DirEntry[str]]]:
        """(inode, entries not starting with "." by name) of `directory`; raises OSError.

        The last scan's listing is used again while the directory's settled stat is
        the one it was taken at (the module docstring says why that is enough).
        """
        info = directory.stat()
        key = str(directory)
        signature = _settled(info)
        cached = self._listings.get(key)
        if signature is not None and cached is not None and cached[0] == signature and not self._forced:
            entries = cached[1]
        else:
            with os.scandir(directory) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        if signature is not None:
            self._listed[key] = (signature, entries)
        return info.st_ino, entries

    def _list_ids(
        self, directory: Path, what: str, targets: set[_WatchTarget]
    ) -> list[tuple[str, Path]] | None:
        """Subdirectories whose names are valid ids."""
        entries = self._list_dir(directory, targets)
        if entries is None:
            return None
        return [
            (entry.name, Path(entry.path))
            for entry in entries
            if _is_dir(entry) and self._id_ok(entry.name, what, entry.path)
        ]

    def _list_tuning_files(
        self, service_dir: Path, targets: set[_WatchTarget]
    ) -> list[tuple[str, Path]] | None:
        entries = self._list_dir(service_dir, targets)
        if entries is None:
            return None
        files = []
        for entry in entries:
            endpoint_id = entry.name[: -len(".json")]
            if entry.name.endswith(".json") and self._id_ok(endpoint_id, "endpoint", entry.path):
                files.append((endpoint_id, Path(entry.path)))
                if entry.is_symlink():
                    _add_link_target(Path(entry.path), service_dir, targets)
        return files

    def _id_ok(self, value: str, what: str, path: str) -> bool:
        if is_valid_id(value):
            return True
        self._warn_once(f"ignoring {path}: {value!r} is not a valid {what} id (SPEC §2)")
        return False

    def _warn_short_of_resources(self, path: Path) -> None:
        self._warn_once(
            f"cannot read {path} for now (too many open files, or no memory): its last good"
            " content stays in force; raise the open files limit (ulimit -n, systemd LimitNOFILE=)"
            " above limits.max_connections"
        )

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("%s", message)

    # -- the loop -----------------------------------------------------------

    def _scan_and_report(self) -> None:
        changes = self.scan()
        if changes:
            try:
                self._on_changes(changes)
            except Exception:  # boundary: a change that cannot be applied must not end the watch
                logger.exception("applying configuration changes failed: %s", changes)

    async def run(self) -> None:
        """Scan on file events and every `poll_interval_s` until cancelled.

        Creates DATA_DIR/config and DATA_DIR/services if missing. If file events
        are unavailable (watch limit, unsupported filesystem) the periodic scan
        alone carries on, and the event watch is retried at each interval.
        An exception raised by `on_changes` is logged; the watch goes on.
        """
        config_dir(self._data_dir).mkdir(parents=True, exist_ok=True)
        self.services_dir.mkdir(parents=True, exist_ok=True)
        self._scan_and_report()
        while True:
            try:
                await self._watch_events(self._watch_targets)
            except _EventsUnavailable as exc:
                # A watched directory vanished before the watch started, or the
                # OS refused a watch: poll once, then try again.
                self._warn_once(f"file events unavailable, polling instead: {exc}")
                await asyncio.sleep(self._poll_interval_s)
                self._scan_and_report()

    async def _watch_events(self, targets: frozenset[_WatchTarget]) -> None:
        """Scan after each batch of events in `targets`; return when that set changes."""
        try:
            batches = awatch(
                *sorted(path for path, _ in targets),
                watch_filter=None,
                debounce=self._debounce_ms,
                step=self._step_ms,
                rust_timeout=max(1, round(self._poll_interval_s * 1000)),
                yield_on_timeout=True,  # an empty batch: time for the periodic scan
                recursive=False,
            )
        except (OSError, RuntimeError) as exc:
            raise _EventsUnavailable(str(exc)) from exc
        async with contextlib.aclosing(batches):
            # The generator sets up the OS watch before its first real await, so
            # once this task has started, a scan catches whatever changed between
            # the previous scan and the moment the watch began.
            first = asyncio.ensure_future(_next_batch(batches))
            try:
                await asyncio.sleep(0)
                self._scan_and_report()
            except BaseException:
                await _discard(first)
                raise
            more = await first
            while more:
                self._scan_and_report()
                if self._watch_targets != targets:
                    return
                more = await _next_batch(batches)


class _EventsUnavailable(Exception):
    """watchfiles could not watch (a path vanished, the OS refused a watch)."""


async def _next_batch(batches: AsyncIterator[object]) -> bool:
    """Wait for the next batch; False if the watch ended."""
    try:
        await batches.__anext__()
    except StopAsyncIteration:
        return False
    except (OSError, RuntimeError) as exc:
        raise _EventsUnavailable(str(exc)) from exc
    return True


async def _discard(task: asyncio.Future[bool]) -> None:
    """Cancel `task` and wait for it, dropping its result or error."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _add_target(directory: Path, targets: set[_WatchTarget]) -> bool:
    """Watch `directory`; False if it is not one (absent, a file, unreadable)."""
    try:
        info = directory.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or not _watchable(directory):
        return False
    targets.add((str(directory), info.st_ino))
    return True


def _watchable(directory: Path) -> bool:
    """Whether the kernel will watch `directory`: inotify needs read permission on it.

    One directory it refuses fails the whole watch, and every file, however
    readable, would wait for the periodic scan. An unreadable one is left to that
    scan alone; making it readable changes its mode, an event in its parent.
    """
    return os.access(directory, os.R_OK)


def _add_link_target(link: Path, service_dir: Path, targets: set[_WatchTarget]) -> None:
    """A tuning file that links out of its directory: watch the directory of the file it names.

    An in-place edit of that file (kept in a config repository, say) makes no event
    in `service_dir`; without this it would wait for the periodic scan, past SPEC §5's
    one second. A link that stays inside `service_dir` (the kubelet's `..data/E.json`)
    needs nothing more: the swap of `..data` is an event there (and watching the
    kubelet's timestamped directories, which come and go, would restart the watch
    at every swap).
    """
    target_dir = Path(os.path.realpath(link)).parent
    inside = Path(os.path.realpath(service_dir))
    if target_dir != inside and inside not in target_dir.parents:
        _add_target(target_dir, targets)


def _settled_signature(path: Path) -> tuple[int, ...] | None:
    """The stat of a file (through symlinks) if its last change is SETTLED_S old, else None."""
    try:
        return _settled(path.stat())
    except OSError:
        return None


def _settled(st: os.stat_result) -> tuple[int, ...] | None:
    """What tells a later change of a file or directory, None if it changed within SETTLED_S
    (another change in the same clock tick would leave its stat as it is)."""
    if st.st_ctime_ns > time.time_ns() - round(SETTLED_S * 1e9):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stat_signature(path: Path) -> tuple[int, ...] | None:
    """A file's identity and last change (through symlinks), or None when it cannot be
    stat'ed: an atomic write (a new inode) or any write in place changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
