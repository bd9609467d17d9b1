"""`lightnode package`, `lightnode deploy`, and the lifecycle commands of `lightnode admin` (SPEC §6, §8, §9).

admin create | services | generations | import | switch | enable | disable |
set-mapping | delete | keys create/list/delete | metrics. Each command is
written once against the operations of `admin.service_layer.ServiceLayer`:
with `--data-dir` the layer changes the files (a running node applies them
live through its watcher), with `--url` `admin.remote.RemoteAdmin` asks the
node's admin API, which runs the same layer.

`keys create` prints the new key alone on one line of stdout (everything else
goes to stderr), so `KEY=$(lightnode admin keys create ...)` works.
Imports: admin.*, services.package, services.store, config.model, config.load, errors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightnode.admin.keys import KEY_PREFIX
from lightnode.admin.remote import RemoteAdmin, RemoteError, http_url
from lightnode.admin.service_layer import ServiceLayer, parse_mapping_args
from lightnode.config.load import parse_endpoint_config
from lightnode.config.model import EndpointConfig, check_id
from lightnode.errors import ConfigError, LightnodeError
from lightnode.services.package import (
    BuiltPackage,
    build_package,
    is_partial_package,
    process_alive,
)
from lightnode.services.store import DataDir


def add_lifecycle_commands(commands: Any, target: argparse.ArgumentParser) -> None:
    """Register the lifecycle sub-commands of `lightnode admin`."""

    def service_command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, parents=[target], help=help_text)
        parser.add_argument("service")
        return parser

    service_command("create", "create an empty, disabled service")
    service_command("generations", "list a service's generations")
    service_command("import", "import a package as a new generation").add_argument("archive", type=Path)
    switch = service_command("switch", "send all traffic to one generation (zero-downtime)")
    which = switch.add_mutually_exclusive_group(required=True)
    which.add_argument("generation", nargs="?")
    which.add_argument("--newest", action="store_true", help="the most recently imported generation")
    service_command("enable", "enable a service")
    service_command("disable", "disable a service (its requests get 503 ServiceNotActive)")
    mapping = service_command("set-mapping", "split traffic between generations by probability")
    mapping.add_argument("pairs", nargs="+", metavar="GEN=PROBA")
    service_command("delete", "delete a service and its generations")
    commands.add_parser("metrics", parents=[target], help="the node's counters as JSON")

    keys = commands.add_parser("keys", help="API keys (SPEC §9)")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND", required=True)
    create = key_commands.add_parser("create", parents=[target], help="create a key; prints it once")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--service", help="a key for this service's /run")
    scope.add_argument("--admin", action="store_true", help="a key for the admin API")
    create.add_argument("--label")
    create.add_argument("--description")
    create.add_argument("--expiry", help="ISO 8601 time after which the key is refused")
    key_commands.add_parser("list", parents=[target], help="list keys (never the keys themselves)")
    delete = key_commands.add_parser("delete", parents=[target], help="delete a key by id (or by the key itself)")
    delete.add_argument("id", metavar="ID")


def add_package_commands(sub: Any) -> None:
    """Register `lightnode package` and `lightnode deploy`."""
    from lightnode.cli import data_dir_path

    package = sub.add_parser("package", help="validate a service directory and write its package (zip)")
    package.add_argument("src_dir", type=Path, metavar="SRC_DIR")
    package.add_argument("-o", "--output", type=Path, metavar="FILE.zip")
    package.add_argument("--generation", metavar="G", help="generation id (default v + UTC time)")
    deploy = sub.add_parser("deploy", help="package + import + switch, in one step")
    deploy.add_argument("src_dir", type=Path, metavar="SRC_DIR")
    where = deploy.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=data_dir_path, help="deploy into this data directory")
    where.add_argument(
        "--url", type=http_url, help="deploy through a node's admin API (the node must see this machine's files)"
    )
    deploy.add_argument(
        "--key",
        default=os.environ.get("LIGHTNODE_ADMIN_KEY"),
        help="admin API key, with --url (default: $LIGHTNODE_ADMIN_KEY, which keeps it out of `ps`)",
    )
    deploy.add_argument("--generation", metavar="G", help="generation id (default v + UTC time)")


# ------------------------------------------------------------------ targets


def _cli_error(message: str, code: int = 1) -> Exception:
    from lightnode.cli import CliError

    return CliError(message, code)


def target_for(args: argparse.Namespace) -> Any:
    """The ServiceLayer on `--data-dir`, or a RemoteAdmin on `--url`."""
    if getattr(args, "url", None):
        return RemoteAdmin(args.url, getattr(args, "key", None))
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise _cli_error(f"--data-dir {data_dir} is not a directory")
    key = getattr(args, "key", None)
    return ServiceLayer(
        DataDir(data_dir.resolve()),
        tuning_in_force=lambda service, endpoint: running_node_tuning(data_dir, key, service, endpoint),
        env_progress=sys.stderr,  # pip's output as it happens, while an import builds code envs
    )


# How long a `--data-dir` command waits for the node run/lightnode.addr names (for its
# status, or its tuning in force when a tuning file is refused); a stale file answers at once.
IN_FORCE_TIMEOUT_S = 5.0


def node_addr(data_dir: Path) -> str:
    """The URL in DATA_DIR/run/lightnode.addr: that of the node started on `data_dir`, if
    one is running ("" when none was). The file outlives a node killed with SIGKILL and
    comes along when the directory is copied: see `serves`."""
    try:
        return (data_dir / "run" / "lightnode.addr").read_text().strip().rstrip("/")
    except OSError:
        return ""


def starting_node_pid(data_dir: Path) -> int | None:
    """The pid in `data_dir`'s run/lightnode.pid if that process is alive and a lightnode
    (a node that has not written run/lightnode.addr yet: it does last, once it serves).

    Its lock is not tried: a lock taken to test it, however briefly, could make a
    node starting at that moment refuse the directory as held by another.
    """
    try:
        text = (data_dir / "run" / "lightnode.pid").read_text().strip()
        cmdline = Path(f"/proc/{int(text)}/cmdline").read_bytes() if text.isdigit() else b""
    except (OSError, ValueError):
        return None
    return int(text) if b"lightnode" in cmdline and int(text) != os.getpid() else None


def serves(status: object, data_dir: Path) -> bool | None:
    """Whether a node's GET status answer says it serves `data_dir` (None: it does not say)."""
    served = status.get("dataDir") if isinstance(status, dict) else None
    if not isinstance(served, str):
        return None
    return os.path.realpath(served) == os.path.realpath(data_dir)


def running_node_tuning(data_dir: Path, key: str | None, service_id: str, endpoint_id: str) -> EndpointConfig | None:
    """The tuning the node running on `data_dir` has in force for the endpoint, if it can tell."""
    url = node_addr(data_dir)
    if not url:
        return None
    raw = RemoteAdmin(url, key).tuning_in_force(service_id, endpoint_id, timeout_s=IN_FORCE_TIMEOUT_S)
    if raw is None:
        return None
    try:
        return parse_endpoint_config(raw, source=f"the node at {url}")
    except ConfigError:
        return None


def call_target(args: argparse.Namespace, operation: str, *params: Any, **kwargs: Any) -> Any:
    """Run one ServiceLayer/RemoteAdmin operation for the command line; errors become CliError."""
    try:
        return getattr(target_for(args), operation)(*params, **kwargs)
    except RemoteError as exc:
        raise _cli_error(str(exc)) from None
    except LightnodeError as exc:
        raise _cli_error(exc.message) from None


def mapping_target(args: argparse.Namespace) -> Any:
    """Who applies a mapping change (switch, set-mapping, deploy's switch).

    With --data-dir a switch used to write state.json only, and say "switched" (or
    "deployed") even when the node running on that directory then refused it (the new
    generation fails to load, SPEC §6: the old one stays in service). When a node runs
    there, the change goes through its admin API instead: the same ServiceLayer on the
    same files, whose answer waits for the node to apply or refuse it. The node must
    say it serves this very directory (a stale lightnode.addr may name another node).
    Without a node, or when its admin API wants a key that was not given, the files
    are changed as before (the latter with a note on stderr).
    """
    if getattr(args, "url", None):
        return target_for(args)
    data_dir = Path(args.data_dir)
    url = node_addr(data_dir)
    if url:
        admin = RemoteAdmin(url, getattr(args, "key", None))
        try:
            status = admin.call("GET", "status", timeout_s=IN_FORCE_TIMEOUT_S)
        except RemoteError as exc:
            if exc.status is not None:
                print(f"lightnode: the change goes to the files of {data_dir} only: whether the running"
                      f" node at {url} applies it is not known ({exc}); see `lightnode admin status`",
                      file=sys.stderr)
        else:
            if serves(status, data_dir):
                return admin
    return target_for(args)


def call_mapping(args: argparse.Namespace, operation: str, *params: Any, target: Any = None) -> Any:
    """`call_target` for an operation that changes a mapping (see `mapping_target`,
    which picks `target` unless the caller did)."""
    try:
        return getattr(target if target is not None else mapping_target(args), operation)(*params)
    except RemoteError as exc:
        raise _cli_error(str(exc)) from None
    except LightnodeError as exc:
        raise _cli_error(exc.message) from None


def not_serving(target: Any, service_id: str, generation: str) -> bool:
    """After a switch a node applied: True, having said why on stderr, when the generation
    switched to does not serve (it failed to load). The node refuses such a switch while
    an older generation serves; with nothing to keep (a first deploy, a failing old one)
    it applies it, and the command must not then say "deployed" and exit 0."""
    if not isinstance(target, RemoteAdmin):
        return False
    failures = target.load_failures(service_id, generation, timeout_s=IN_FORCE_TIMEOUT_S)
    if failures:
        print(f"lightnode: {service_id} is switched to generation {generation}, but it does not serve:",
              file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
    return bool(failures)


# ----------------------------------------------------------------- commands


def _services(args: argparse.Namespace) -> int:
    for service in call_target(args, "services"):
        entries = service.get("mapping", {}).get("entries", [])
        mapping = " ".join(f"{e['generation']}={e['proba']:g}" for e in entries) or "-"
        print(f"{service['id']}\tenabled={service['enabled']}\tmapping={mapping}"
              f"\tgenerations={len(service.get('generations', []))}")
    return 0


def _create(args: argparse.Namespace) -> int:
    call_target(args, "create_service", check_id(args.service, "service id"))
    print(f"created service {args.service} (disabled until a switch)")
    return 0


def _generations(args: argparse.Namespace) -> int:
    answer = call_target(args, "generations", check_id(args.service, "service id"))
    if answer.get("mappingError"):
        print(f"mapping unknown, none shown as mapped: {answer['mappingError']}", file=sys.stderr)
    for gen in answer["generations"]:
        flags = [f for f in ("mapped", "mounted") if gen.get(f)]
        print(f"{gen['generationId']}\tcreated={gen.get('created', gen['createdOn'])}\t{' '.join(flags)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    service = check_id(args.service, "service id")
    result = call_target(args, "import_archive", service, args.archive.resolve())
    note = " (new service, disabled until a switch)" if result.get("createdService") else ""
    print(f"imported {service} generation {result['generation']}{note}")
    return 0


def _switch(args: argparse.Namespace) -> int:
    service = check_id(args.service, "service id")
    target = mapping_target(args)
    if args.newest:
        result = call_mapping(args, "switch_to_newest", service, target=target)
    else:
        result = call_mapping(args, "switch_to", service, check_id(args.generation, "generation id"), target=target)
    if not_serving(target, service, result["switchedToGeneration"]):
        return 1
    print(f"{service}: switched to {result['switchedToGeneration']}")
    return 0


def _enable(args: argparse.Namespace) -> int:
    call_target(args, "enable", check_id(args.service, "service id"))
    print(f"{args.service}: enabled")
    return 0


def _disable(args: argparse.Namespace) -> int:
    result = call_target(args, "disable", check_id(args.service, "service id"))
    if result.get("note"):
        print(f"{args.service}: {result['note']}", file=sys.stderr)
    print(f"{args.service}: disabled")
    return 0


def _set_mapping(args: argparse.Namespace) -> int:
    service = check_id(args.service, "service id")
    result = call_mapping(args, "set_mapping", service, parse_mapping_args(args.pairs))
    entries = result["mapping"]["entries"]
    print(f"{service}: mapping " + " ".join(f"{e['generation']}={e['proba']:g}" for e in entries) + " (enabled)")
    return 0


def _delete(args: argparse.Namespace) -> int:
    answer = call_target(args, "delete_service", check_id(args.service, "service id"))
    print(f"deleted service {args.service}")
    kept = answer.get("keysKept", 0) if isinstance(answer, dict) else 0
    if kept:
        print(f"its {kept} API key(s) stay in config/keys.json, valid for any service deployed as"
              f" {args.service} later: `lightnode admin keys list` shows them, `keys delete ID` revokes one",
              file=sys.stderr)
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from lightnode.admin.cli import node_url

    if not getattr(args, "url", None):
        args.url = node_url(args)  # the running node of --data-dir
    json.dump(call_target(args, "metrics"), sys.stdout, indent=2)
    print()
    return 0


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        service = check_id(args.service, "service id") if args.service else None
        result = call_target(args, "create_key", service_id=service, label=args.label,
                       description=args.description, expiry=args.expiry)
        scope = "the admin API" if service is None else f"service {service}"
        print(f"created key {result['id']} for {scope}; it is shown once, here:", file=sys.stderr)
        print(result["key"], flush=True)
        return 0
    if args.keys_command == "list":
        for key in call_target(args, "list_keys"):
            scope = "admin" if key["admin"] else f"service:{key['serviceId']}"
            state = "\texpired" if key.get("expired") else ""
            print(f"{key['id']}\t{scope}\tlabel={key.get('label') or '-'}\tcreated={key['createdOn']}{state}")
        return 0
    if args.id.startswith(KEY_PREFIX):
        result = call_target(args, "delete_key", args.id)
    else:
        result = call_target(args, "delete_key_by_id", args.id)
    print(f"deleted key {result['deleted']}")
    return 0


LIFECYCLE_HANDLERS = {
    "services": _services,
    "create": _create,
    "generations": _generations,
    "import": _import,
    "switch": _switch,
    "enable": _enable,
    "disable": _disable,
    "set-mapping": _set_mapping,
    "delete": _delete,
    "metrics": _metrics,
    "keys": _keys,
}


# ------------------------------------------------------- package and deploy


def run_package(args: argparse.Namespace) -> int:
    built = build_package(args.src_dir, output=args.output, generation=args.generation)
    print(f"wrote {built.path} (service {built.service_id}, generation {built.generation}, "
          f"{built.files} files)")
    for earlier in built.skipped:
        if is_partial_package(earlier):
            print(f"left out {earlier}: an unfinished package (a `lightnode package` killed half way);"
                  " delete it", file=sys.stderr)
        else:
            print(f"left out {earlier}: an earlier package", file=sys.stderr)
    say_outside_links(built)
    return 0


def say_outside_links(built: BuiltPackage, limit: int = 10) -> None:
    """Name the symbolic links whose targets, outside the source, were bundled."""
    for link, target in built.outside_links[:limit]:
        print(f"bundled {link} -> {target}: a link out of the source directory, followed;"
              " remove it if that is not meant to ship", file=sys.stderr)
    if len(built.outside_links) > limit:
        print(f"... and {len(built.outside_links) - limit} more links out of the source directory",
              file=sys.stderr)


# deploy packages into $TMPDIR/lightnode-deploy-<pid>-<random>/: one that was killed (kill -9,
# a closed ssh session) cannot remove its own, a zip as large as the service.
DEPLOY_TMP_PREFIX = "lightnode-deploy-"
_DEPLOY_TMP = re.compile(re.escape(DEPLOY_TMP_PREFIX) + r"(\d+)-")


def remove_stale_deploy_dirs(tmp_dir: Path) -> None:
    """Remove the temporary directories of deploys whose process is gone. Those of
    running deploys, of other users (not ours to remove) and names without a pid stay."""
    try:
        with os.scandir(tmp_dir) as entries:
            names = [e.name for e in entries if e.name.startswith(DEPLOY_TMP_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        match = _DEPLOY_TMP.match(name)
        if match is None:
            continue
        if process_alive(int(match.group(1))):
            continue  # a deploy still running (or another user's process)
        try:
            if os.stat(tmp_dir / name, follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(tmp_dir / name, ignore_errors=True)


def run_deploy(args: argparse.Namespace) -> int:
    """package + import + switch."""
    from lightnode.cli import CliError

    remove_stale_deploy_dirs(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{DEPLOY_TMP_PREFIX}{os.getpid()}-") as tmp:
        # The node opens the package by path: one running as another user (systemd's
        # `lightnode`) must be able to enter the directory (mkdtemp makes it 0700).
        os.chmod(tmp, 0o755)
        built = build_package(args.src_dir, output=Path(tmp) / "package.zip", generation=args.generation)
        say_outside_links(built)
        try:
            call_target(args, "import_archive", built.service_id, built.path)
        except (CliError, ConfigError) as exc:
            # The package is a temporary file, gone when deploy exits: a refusal names the source.
            source = f"{os.path.abspath(args.src_dir)} (packaged as generation {built.generation})"
            raise _cli_error(str(exc).replace(str(built.path), source)) from None
        print(f"imported {built.service_id} generation {built.generation}", file=sys.stderr)
        target = mapping_target(args)
        call_mapping(args, "switch_to", built.service_id, built.generation, target=target)
    if not_serving(target, built.service_id, built.generation):
        return 1
    print(f"deployed {built.service_id} generation {built.generation}")
    if isinstance(target, ServiceLayer):
        # No node loaded it: a syntax error in the code would only show when one starts.
        print(f"no node runs on {args.data_dir}: its files are changed, and the code loads when a node"
              f" starts there (`lightnode test {args.src_dir}` runs it now)", file=sys.stderr)
    return 0
