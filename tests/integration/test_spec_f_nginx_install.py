"""The shipped nginx file installed as the README says, on a distribution's nginx (SPEC §12).

Debian's and Ubuntu's nginx packages enable a default site that is the
`default_server` of port 80 and whose `server_name` is `_`, as the shipped
file's. Copied into `conf.d/` beside it, a server block that is not the default
itself is then never chosen for a request by IP address or by any host name it
does not list: `nginx -t` only warns ("conflicting server name") and every
request gets the default site's 404. The shipped block claims `default_server`,
so that `nginx -t` refuses the pair instead, and with the default site removed
(README "Running in production") requests reach the nodes.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, write_service
from tests.integration.test_nginx import NGINX, SHIPPED, Nginx, needs_nginx

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# /etc/nginx/sites-available/default of the Debian package, comments left out.
STOCK_DEFAULT_SITE = """\
server {
    listen 80 default_server;
    listen [::]:80 default_server;
    root /var/www/html;
    index index.html index.htm index.nginx-debian.html;
    server_name _;
    location / {
        try_files $uri $uri/ =404;
    }
}
"""


def distribution_layout(workdir: Path, port: int, node_port: int, *, default_site: bool) -> Path:
    """nginx.conf as the package lays it out: `conf.d/*.conf`, then `sites-enabled/*`."""
    for sub in ("conf.d", "sites-enabled", "logs"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    shipped = SHIPPED.read_text().replace("/var/log/nginx/", f"{workdir / 'logs'}/")
    shipped = shipped.replace("listen 80", f"listen 127.0.0.1:{port}")
    for host in ("10.0.0.11", "10.0.0.12", "10.0.0.13"):
        shipped = shipped.replace(f"server {host}:12000", f"server 127.0.0.1:{node_port}")
    (workdir / "conf.d" / "lightnode.conf").write_text(shipped)
    if default_site:
        site = STOCK_DEFAULT_SITE.replace("listen 80", f"listen 127.0.0.1:{port}")
        site = site.replace("    listen [::]:80 default_server;\n", "")
        (workdir / "sites-enabled" / "default").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'logs' / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n{temp_paths}\n"
        f"    include {workdir / 'conf.d'}/*.conf;\n"
        f"    include {workdir / 'sites-enabled'}/*;\n}}\n"
    )
    return conf


def nginx_t(workdir: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX is not None
    return subprocess.run(
        [NGINX, "-p", str(workdir), "-e", str(workdir / "logs" / "error.log"), "-c", str(conf), "-t"],
        capture_output=True, text=True, timeout=20,
    )


@needs_nginx
def test_beside_the_distributions_default_site_nginx_t_refuses_rather_than_ignoring_it(tmp_path: Path) -> None:
    conf = distribution_layout(tmp_path, free_port(), 12001, default_site=True)
    done = nginx_t(tmp_path, conf)
    # Not "syntax is ok" with a warning that the lightnode block is ignored: every
    # request would then get the default site's 404 after a reload.
    assert "conflicting server name" not in done.stderr, done.stderr
    assert done.returncode != 0, done.stderr
    assert "duplicate default server" in done.stderr, done.stderr


@needs_nginx
def test_with_the_default_site_removed_requests_reach_the_node(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    write_service(root, "svc", {"add": "def add(a, b):\n    return a + b\n"})
    node = node_factory(root)
    port = free_port()
    conf = distribution_layout(tmp_path / "nginx", port, node.port, default_site=False)
    done = nginx_t(tmp_path / "nginx", conf)
    assert done.returncode == 0 and "warn" not in done.stderr, done.stderr
    nginx = Nginx.__new__(Nginx)  # the lab's start/stop, on this layout
    nginx.workdir, nginx.port, nginx.conf, nginx.proc = tmp_path / "nginx", port, conf, None
    nginx.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/public/api/v1/svc/add/run", json.dumps({"a": 2, "b": 3}))
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
    finally:
        nginx.stop()
    assert answer.status == 200, body
    assert json.loads(body)["response"] == 5
