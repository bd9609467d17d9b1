"""The admin operations of `ServiceLayer`, carried out by a running node through /admin/api/.

`RemoteAdmin` has the same method names and answers as
`admin.service_layer.ServiceLayer`, so every `lightnode admin` command is
written once and works with `--data-dir` (files) or `--url` (HTTP). Errors
come back as `RemoteError` with the node's status and message.

Imports: standard library only.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Mutations answer once the node has applied them, which for a switch means the
# new generation's pools reached floor: that may take as long as a model load, up to
# server.json's switch.warmup_timeout_ms (at most 10 minutes).
MUTATION_TIMEOUT_S = 660.0
READ_TIMEOUT_S = 30.0


class RemoteError(Exception):
    """The node refused the request (`status`: its HTTP status), or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def http_url(text: str) -> str:
    """argparse type of --url: an http:// or https:// URL with a host.

    A URL holding credentials (`http://KEY@host:port`) is refused without repeating
    it: urllib does not send them (it looks up a host named `KEY@host`), and the
    message would print the key into a terminal or a CI log. So is a query or a
    fragment, which the admin path would follow (`/?x/admin/api/...`).
    """
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        raise argparse.ArgumentTypeError(
            "must not hold credentials (user@ or user:password@ before the host):"
            " pass the admin key with --key or $LIGHTNODE_ADMIN_KEY"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        raise argparse.ArgumentTypeError(
            f"must be the node's base URL, without a query or fragment (got {shown!r} and more);"
            " pass the admin key with --key or $LIGHTNODE_ADMIN_KEY"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL with a host (got {text!r})")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in 0..65535
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}: {exc}") from None
    return text


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class RemoteAdmin:
    def __init__(self, url: str, key: str | None = None) -> None:
        self.url = url.rstrip("/")
        # A key read from a file or an env file keeps its line end ("\r\n" from an
        # edited file): surrounding whitespace is never part of a key.
        self.key = key.strip() if key else key

    def _authorization(self) -> str:
        """The Authorization header for `key`, checked before anything is sent.

        A key is printable ASCII (`lnk_` + URL-safe characters): anything else could not
        travel in a header, and http.client's refusal would quote the header, key included,
        in a message that blames the connection.
        """
        key = self.key or ""
        if not (key.isascii() and key.isprintable()):
            raise RemoteError(
                "the admin key (--key or $LIGHTNODE_ADMIN_KEY) holds a control or non-ASCII"
                " character: it is not a lightnode key"
            )
        return f"Bearer {key}"

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One admin API call; the decoded JSON answer (None for an empty one)."""
        url = f"{self.url}/admin/api/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        if timeout_s is None:
            timeout_s = READ_TIMEOUT_S if method == "GET" else MUTATION_TIMEOUT_S
        authorization = self._authorization() if self.key else None
        try:
            request = urllib.request.Request(url, data=data, method=method)  # ValueError: not a URL
            if authorization:
                request.add_header("Authorization", authorization)
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except (ValueError, AttributeError):
                pass
            if exc.code == 401 and not self.key:
                detail += " (no admin key given: pass --key or set LIGHTNODE_ADMIN_KEY)"
            raise RemoteError(f"{method} {_public(path)}: HTTP {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None
        except ValueError as exc:  # urllib's "unknown url type" and the like
            raise RemoteError(f"cannot reach {self.url}: {exc}") from None
        return json.loads(raw) if raw else None

    # --- the ServiceLayer methods ------------------------------------------

    def services(self) -> Any:
        return self.call("GET", "services")

    def create_service(self, service_id: str) -> Any:
        return self.call("POST", "services/", {"serviceId": service_id})

    def delete_service(self, service_id: str) -> Any:
        return self.call("DELETE", f"services/{_quote(service_id)}")

    def generations(self, service_id: str) -> Any:
        return self.call("GET", f"services/{_quote(service_id)}/generations")

    def import_archive(self, service_id: str, archive: Path | str) -> Any:
        path = str(Path(archive).resolve())
        return self.call(
            "POST",
            f"services/{_quote(service_id)}/generations/actions/importFromArchive",
            params={"filePath": path},
        )

    def switch_to(self, service_id: str, generation: str) -> Any:
        return self.call("POST", f"services/{_quote(service_id)}/actions/switchTo/{_quote(generation)}")

    def switch_to_newest(self, service_id: str) -> Any:
        return self.call("POST", f"services/{_quote(service_id)}/actions/switchToNewest")

    def set_mapping(self, service_id: str, mapping: object) -> Any:
        return self.call("POST", f"services/{_quote(service_id)}/actions/setMapping", mapping)

    def build_envs(self, service_id: str, generation: str | None = None) -> Any:
        body = {} if generation is None else {"generation": generation}
        return self.call("POST", f"services/{_quote(service_id)}/actions/buildEnv", body)

    def enable(self, service_id: str) -> Any:
        return self.call("POST", f"services/{_quote(service_id)}/actions/enable")

    def disable(self, service_id: str) -> Any:
        return self.call("POST", f"services/{_quote(service_id)}/actions/disable")

    def endpoint_settings(self, service_id: str, endpoint_id: str) -> Any:
        return self.call("GET", f"services/{_quote(service_id)}/endpoints/{_quote(endpoint_id)}/settings")

    def set_endpoint_settings(self, service_id: str, endpoint_id: str, raw: object) -> Any:
        path = f"services/{_quote(service_id)}/endpoints/{_quote(endpoint_id)}/settings"
        return self.call("POST", path, raw)

    def tune(self, service_id: str, endpoint_id: str, overrides: dict[str, Any]) -> Any:
        """POST `overrides` to the node, which overlays them on its tuning file under the
        file's lock (validated there), as `admin tune --data-dir` does: tunes at once, from
        here, the command line or both, each keep their change.

        A node without that route (404: an older version) gets the overlay made here:
        GET, overlay section by section, POST the whole (two tunes at once may then lose
        one's change). When the node refuses its tuning file (400), the overlay is on the
        values the node has in force (or the defaults when it has none for this endpoint),
        and the answer's `note` says that the refused file was replaced, and on what.
        """
        path = f"services/{_quote(service_id)}/endpoints/{_quote(endpoint_id)}/tune"
        try:
            return self.call("POST", path, overrides)
        except RemoteError as exc:
            if exc.status != 404 or "HTTP 404: Not found: /admin/api/" not in str(exc):
                raise  # 404 of the route itself only, not of the service or the endpoint
        note = None
        try:
            current = self.endpoint_settings(service_id, endpoint_id)
        except RemoteError as exc:
            if exc.status != 400:
                raise
            in_force = self.tuning_in_force(service_id, endpoint_id)
            current = in_force or {}
            on_what = "the values the node has in force" if in_force else "the defaults"
            note = f"replaced the refused tuning file ({exc}); the change was applied on {on_what}"
        for section, values in overrides.items():
            current.setdefault(section, {}).update(values)
        answer = self.set_endpoint_settings(service_id, endpoint_id, current)
        if note is not None and isinstance(answer, dict):
            answer["note"] = note
        return answer

    def tuning_in_force(self, service_id: str, endpoint_id: str, timeout_s: float | None = None) -> Any:
        """`{"pool", "limits"}` in force for the endpoint on the node (from its stats), or None.

        None also when the node cannot tell (no pool of that endpoint, an error).
        """
        for endpoint in self._stats(service_id, timeout_s).get("endpoints") or []:
            config = endpoint.get("config")
            if endpoint.get("endpointId") == endpoint_id and isinstance(config, dict):
                return {"pool": dict(config.get("pool") or {}), "limits": dict(config.get("limits") or {})}
        return None

    def _stats(self, service_id: str, timeout_s: float | None) -> dict[str, Any]:
        """GET services/<S>/stats, or {} when the node cannot tell (an error, no such service)."""
        try:
            stats = self.call("GET", f"services/{_quote(service_id)}/stats", timeout_s=timeout_s)
        except RemoteError:
            return {}
        return stats if isinstance(stats, dict) else {}

    def load_failures(self, service_id: str, generation: str, timeout_s: float | None = None) -> list[str]:
        """Why `generation` of `service_id` does not serve on the node, one line per
        endpoint that failed to load (or the generation's own error); [] when it loads,
        or when the node cannot tell."""
        stats = self._stats(service_id, timeout_s)
        failures = []
        error = (stats.get("generationErrors") or {}).get(generation)
        if error:
            failures.append(f"generation {generation}: {error}")
        for endpoint in stats.get("endpoints") or []:
            if endpoint.get("generation") == generation and endpoint.get("loadState") == "failed":
                failures.append(f"endpoint {endpoint.get('endpointId')}: {endpoint.get('lastLoadError')}")
        return failures

    def list_keys(self) -> Any:
        return self.call("GET", "keys")

    def create_key(self, *, service_id: str | None = None, label: str | None = None, **extra: Any) -> Any:
        body = {"label": label, **extra}
        if service_id is not None:
            body["serviceId"] = service_id
        return self.call("POST", "keys", body)

    def delete_key_by_id(self, key_id: str) -> Any:
        return self.call("DELETE", f"keys/{_quote(key_id)}/key")

    def delete_key(self, key: str) -> Any:
        return self.call("DELETE", f"keys/{_quote(key)}")

    def metrics(self) -> Any:
        return self.call("GET", "metrics")


def _public(path: str) -> str:
    """The path for messages, with every segment that holds a key (`lnk_...`) masked."""
    parts = path.split("/")
    return "/".join("<key>" if "lnk_" in urllib.parse.unquote(p).lower() else p for p in parts)
