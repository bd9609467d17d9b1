"""The deployment examples under config/ say what SPEC §11-§12 and the node's defaults need.

- nginx (config/nginx/lightnode.conf): parsed into directives; retries, keep-alive,
  request id, limits and timeouts checked against the node's own defaults (the
  real `nginx -t` and a live run are in tests/integration/test_nginx.py);
- Kubernetes (config/kubernetes/*.yaml): validated against the Kubernetes
  OpenAPI schemas shipped by `kubernetes-validate` (strict: unknown fields are
  errors), for the oldest and the newest version it knows; then the project's
  own rules: probes, shutdown arithmetic, ConfigMap mounts, and the JSON in the
  ConfigMaps parsed by lightnode's own config loader;
- systemd (config/systemd/lightnode.service): the keys, and `systemd-analyze
  verify` where it exists;
- container (config/container/Containerfile): a structural lint (no engine here);
- logrotate (config/logrotate/lightnode): its directives against how the node reopens
  its logs, and the systemd unit's data directory and user.
"""

from __future__ import annotations

import configparser
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.load import decode_endpoint_config, parse_server_settings
from lightnode.config.model import PoolLimits, ServerLimits, ServerSettings
from tests.conftest import REPO

CONFIG = REPO / "config"
# Node.shutdown after the grace period: 5 s for killed pipelines to be reaped,
# 1 s to close connections, 1 s for the server (lightnode/daemon.py).
SHUTDOWN_AFTER_GRACE_S = 7
GRACE_S = ServerSettings().shutdown.grace_ms / 1000


# ------------------------------------------------------------ the two examples


def test_the_example_server_json_and_tuning_file_parse_and_show_the_defaults() -> None:
    """README: "Examples of `server.json` and of a tuning file are in `config/`": a user
    copies them into a data directory, so each must load, and say the defaults."""
    server = json.loads((CONFIG / "server.json").read_text())
    assert parse_server_settings(server, source="config/server.json") == ServerSettings()
    for section, keys in server.items():  # every section's keys as given, none left out
        assert set(keys) <= set(getattr(ServerSettings(), section).__dataclass_fields__), section
    tuning = (CONFIG / "tuning-example" / "quote.json").read_bytes()
    config = decode_endpoint_config(tuning, source="config/tuning-example/quote.json")
    assert config.pool == PoolLimits()
    assert set(json.loads(tuning)["pool"]) == set(PoolLimits.__dataclass_fields__)


# ---------------------------------------------------------------------- nginx


Directive = tuple[str, list[str], list[Any] | None]  # name, arguments, block


def parse_nginx(text: str) -> list[Directive]:
    """A small nginx config parser: directives with arguments and nested blocks."""
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};'\"]+", re.sub(r"(?m)#.*$", "", text))
    stack: list[list[Any]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].append((words[0], words[1:], None))
            words = []
        elif token == "{":
            block: list[Any] = []
            stack[-1].append((words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token.strip("'\"") if token[0] in "'\"" and len(token) > 1 else token)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return stack[0]


def find(block: list[Directive], name: str) -> list[Directive]:
    return [d for d in block if d[0] == name]


def one(block: list[Directive], name: str) -> list[str]:
    found = find(block, name)
    assert len(found) == 1, f"{name}: {found}"
    return found[0][1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match[2]]


@pytest.fixture(scope="module")
def nginx() -> list[Directive]:
    return parse_nginx((CONFIG / "nginx" / "lightnode.conf").read_text())


def test_nginx_upstream_has_several_nodes_marked_down_passively_and_keepalive(nginx: list[Directive]) -> None:
    (upstream,) = find(nginx, "upstream")
    name, block = upstream[1][0], upstream[2]
    assert block is not None
    servers = find(block, "server")
    assert len(servers) >= 2
    for _, args, _ in servers:
        assert any(a.startswith("max_fails=") for a in args) and any(a.startswith("fail_timeout=") for a in args)
    assert int(one(block, "keepalive")[0]) > 0
    # nginx closes idle upstream connections before the node would.
    assert seconds(one(block, "keepalive_timeout")[0]) * 1000 < ServerLimits().keepalive_timeout_ms
    (location,) = [d for d in find(find(nginx, "server")[0][2] or [], "location") if d[1] == ["/"]]
    assert one(location[2] or [], "proxy_pass") == [f"http://{name}"]


def proxy_location(nginx: list[Directive]) -> list[Directive]:
    (server,) = find(nginx, "server")
    (location,) = [d for d in find(server[2] or [], "location") if d[1] == ["/"]]
    assert location[2] is not None
    return location[2]


def test_nginx_retries_503_of_posts_and_never_on_timeout(nginx: list[Directive]) -> None:
    location = proxy_location(nginx)
    retry = one(location, "proxy_next_upstream")
    assert "http_503" in retry and "non_idempotent" in retry
    assert "timeout" not in retry, "a POST that timed out may still run: never re-send it"
    assert one(location, "proxy_request_buffering") == ["on"]  # nginx keeps the body to re-send it
    assert int(one(location, "proxy_next_upstream_tries")[0]) >= 2
    # The other choice is offered in a comment, with its explanation.
    text = (CONFIG / "nginx" / "lightnode.conf").read_text()
    assert "# proxy_next_upstream http_503 non_idempotent;" in text
    assert "run twice" in text


def test_nginx_keepalive_request_id_and_limits(nginx: list[Directive]) -> None:
    location = proxy_location(nginx)
    assert one(location, "proxy_http_version") == ["1.1"]
    headers = {args[0]: args[1] for _, args, _ in find(location, "proxy_set_header")}
    assert headers["Connection"] == ""
    request_id_var = headers["X-Request-Id"]
    (mapping,) = [d for d in find(nginx, "map") if d[1] == ["$http_x_request_id", request_id_var]]
    entries = {name: args for name, args, _ in mapping[2] or []}
    assert entries["default"] == ["$http_x_request_id"] and entries[""] == ["$request_id"]
    # A queued request is answered within pool.timeout: nginx must wait longer.
    assert seconds(one(location, "proxy_read_timeout")[0]) * 1000 > PoolLimits().timeout
    (server,) = find(nginx, "server")
    body = one(server[2] or [], "client_max_body_size")[0]
    assert int(body.rstrip("m")) * 1024 * 1024 == ServerLimits().max_body_bytes
    admin = [d for d in find(server[2] or [], "location") if d[1] == ["/admin/"]]
    assert admin and one(admin[0][2] or [], "return") == ["403"]


# ------------------------------------------------------------------ Kubernetes


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every manifest under config/kubernetes/ by `Kind/name` (shared: do not mutate)."""
    return _k8s_docs()


@functools.cache
def _k8s_docs() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extras)")
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((CONFIG / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extras)")
    docs = k8s_docs()
    assert set(docs) >= {
        "Deployment/lightnode", "Service/lightnode", "HorizontalPodAutoscaler/lightnode",
        "ConfigMap/lightnode-tuning-demo", "ConfigMap/lightnode-server",
    }
    for version in ("1.27.0", kv.latest_version()):
        for doc in docs.values():
            kv.validate(doc, version, strict=True)  # raises ValidationError
    # The validator does catch a misspelt field.
    broken = json.loads(json.dumps(docs["Deployment/lightnode"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def pod_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = k8s_docs()["Deployment/lightnode"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def test_deployment_probes_command_and_shutdown_arithmetic() -> None:
    spec, container = pod_spec()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/isAlive"
    assert container["args"] == ["--data-dir", "/data", "--host", "0.0.0.0"]
    assert "command" not in container  # the image's entrypoint (tini -- lightnode) stays
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 12000
    server = json.loads(k8s_docs()["ConfigMap/lightnode-server"]["data"]["server.json"])
    settings = parse_server_settings(server, source="configmap-server.yaml")
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed_s = int(pre_stop[1]) + settings.shutdown.grace_ms / 1000 + SHUTDOWN_AFTER_GRACE_S
    assert spec["terminationGracePeriodSeconds"] >= needed_s
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_configmaps_are_mounted_where_the_node_reads_them_and_parse() -> None:
    docs = k8s_docs()
    spec, container = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/data"]["name"]]
    services = mounts["/data/services"]
    assert services["readOnly"] is True and "persistentVolumeClaim" in volumes[services["name"]]
    tuning_mounts = {p: m for p, m in mounts.items() if p.startswith("/data/config/services/")}
    assert tuning_mounts
    for path, mount in tuning_mounts.items():
        assert "subPath" not in mount, "a subPath mount never sees the kubelet's ..data swap"
        configmap = docs[f"ConfigMap/{volumes[mount['name']]['configMap']['name']}"]
        for key, text in configmap["data"].items():
            assert key.endswith(".json")
            decode_endpoint_config(text.encode(), source=f"{path}/{key}")  # raises ConfigError
    server = mounts["/data/config/server.json"]
    assert docs[f"ConfigMap/{volumes[server['name']]['configMap']['name']}"]["data"]["server.json"]


def test_the_code_envs_of_the_shared_packages_come_with_them() -> None:
    """A requirements code env is built at import (SPEC §7.2), into the importer's
    DATA_DIR/code-envs, and a node never builds one at load time: pods that got the
    packages from the shared claim but kept code-envs/ in their emptyDir answered
    503 EndpointUnavailable ("code env ... is not built") for every such endpoint.
    Both come from the claim, which holds the importing Job's data directory."""
    spec, container = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    services, code_envs = mounts["/data/services"], mounts["/data/code-envs"]
    assert services["name"] == code_envs["name"]
    assert "persistentVolumeClaim" in volumes[services["name"]]
    assert (services.get("subPath"), code_envs.get("subPath")) == ("services", "code-envs")
    assert services["readOnly"] is True and code_envs["readOnly"] is True


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    docs = k8s_docs()
    deployment = docs["Deployment/lightnode"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = docs["Service/lightnode"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = docs["HorizontalPodAutoscaler/lightnode"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    _, container = pod_spec()
    assert container["resources"]["requests"]["cpu"]  # utilisation needs a request


# ------------------------------------------------------------------- logrotate


def logrotate_config() -> tuple[list[str], dict[str, list[str]]]:
    """config/logrotate/lightnode: the files of its one block, and its directives."""
    text = (CONFIG / "logrotate" / "lightnode").read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    assert lines[0].endswith("{") and lines[-1] == "}" and sum("{" in line for line in lines) == 1
    directives = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    return lines[0][:-1].split(), directives


def test_logrotate_rotates_the_units_logs_by_moving_them_away() -> None:
    """The node reopens a log moved away at its next line (observe.logsetup, observe.querylog):
    no copytruncate (it loses the lines written between copy and truncate), no create
    (the node makes the file as its own user), dated names apart from the node's own
    size rotation's .1 ... .5, as the systemd unit's user, on its data directory."""
    from lightnode.observe.logsetup import SERVER_LOG

    files, directives = logrotate_config()
    state_dir = "/var/lib/" + unit()["Service"]["StateDirectory"]
    assert sorted(files) == sorted(f"{state_dir}/logs/{name}" for name in (SERVER_LOG, "queries.log"))
    assert "copytruncate" not in directives and "create" not in directives
    assert {"nocreate", "dateext", "missingok", "delaycompress"} <= set(directives)
    user = unit()["Service"]["User"]
    assert directives["su"] == [user, unit()["Service"]["Group"]]
    assert int(directives["rotate"][0]) > 0


# --------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONFIG / "systemd" / "lightnode.service")
    return parser


def test_systemd_unit_keys() -> None:
    service = unit()["Service"]
    assert service["Type"] == "exec"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the node stops its own pipelines after draining
    assert seconds(service["TimeoutStopSec"]) >= GRACE_S + SHUTDOWN_AFTER_GRACE_S
    assert service["User"] not in ("root", "0") and service["User"] == service["Group"]
    command = service["ExecStart"].split()
    assert command[0].endswith("/lightnode")
    assert command[1:3] == ["--data-dir", "/var/lib/lightnode"]
    assert service["StateDirectory"] == "lightnode"
    sysusers = (CONFIG / "systemd" / "lightnode.sysusers").read_text()
    assert re.search(rf"^u {service['User']} ", sysusers, re.M)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    stub = tmp_path / "lightnode"  # verify checks that ExecStart's program exists
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (CONFIG / "systemd" / "lightnode.service").read_text()
    program = unit()["Service"]["ExecStart"].split()[0]
    (tmp_path / "lightnode.service").write_text(text.replace(program, str(stub)))
    done = subprocess.run([analyze, "verify", str(tmp_path / "lightnode.service")],
                          capture_output=True, text=True, timeout=60)
    # verify warns about unknown keys or bad values but still exits 0: any output fails.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr


# ------------------------------------------------------------------- container


def containerfile() -> list[tuple[str, str]]:
    text = (CONFIG / "container" / "Containerfile").read_text()
    text = re.sub(r"(?m)^\s*#.*\n", "", text).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip()]


def test_containerfile_structure() -> None:
    steps = containerfile()
    kinds = [kind for kind, _ in steps]
    froms = [arg for kind, arg in steps if kind == "FROM"]
    # A build stage compiles the wheel; the node runs on the same Python image without gcc.
    assert len(froms) == 2 and froms[0] == f"{froms[1]} AS build", froms
    assert re.fullmatch(r"python:3\.(1[0-9])-slim(-\w+)?", froms[1]), froms
    runs = [arg for kind, arg in steps if kind == "RUN"]
    assert any("LIGHTNODE_COMPILE=1 pip wheel" in run for run in runs), runs
    assert any(arg.startswith("--from=build /wheels") for kind, arg in steps if kind == "COPY")
    users = [arg for kind, arg in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), "RUN after USER"
    args = {kind: arg for kind, arg in steps}
    assert json.loads(args["VOLUME"]) == ["/data"]
    assert args["EXPOSE"] == "12000"
    assert "/isAlive" in args["HEALTHCHECK"] and "12000" in args["HEALTHCHECK"]
    entrypoint, cmd = json.loads(args["ENTRYPOINT"]), json.loads(args["CMD"])  # exec form: signals reach it
    assert entrypoint[-1] == "lightnode"
    assert cmd == ["--data-dir", "/data", "--host", "0.0.0.0"]
    assert args.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"


def test_containerfile_copies_what_the_package_needs() -> None:
    copied = " ".join(arg for kind, arg in containerfile() if kind == "COPY")
    for needed in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "lightnode"):
        assert needed in copied
    ignore = (CONFIG / "container" / "Containerfile.dockerignore").read_text().split()
    for needed in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "lightnode/"):
        assert f"!{needed}" in ignore, f"{needed} is excluded from the build context"
    assert "**/*.so" in ignore, "a local compiled build would enter the image"
