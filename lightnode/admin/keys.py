"""API keys (SPEC §9): the key store in DATA_DIR/config/keys.json and request authentication.

A key is `lnk_` + 43 URL-safe characters from `secrets` (256 random bits). Only
its SHA-256 digest is stored. A fast hash is the right choice for keys of this
entropy: nothing can be brute-forced from a digest of 256 random bits, so a
slow KDF (scrypt, pbkdf2) would only add milliseconds of CPU to every request
of a private service. A presented key is hashed and compared with every stored
digest by `hmac.compare_digest`, without stopping at the first match, so the
time taken does not depend on which key (if any) matched.

Keys travel as the HTTP Basic user name (what the official client sends) or
as `Authorization: Bearer <key>`. Service keys open one service's /run;
admin keys open /admin/api/. With no admin key defined (an expired one still
counts), the admin API answers on loopback only. Failures are logged on
`lightnode.audit` with a short digest prefix (a fingerprint), never the key.

The file is hot-reloaded (`reload`, on the watcher's KeysChanged): a file that
does not parse is refused whole and the last good keys stay in force.
Mutations (create, delete) are read-modify-write under an flock on
config/.keys.lock, so the CLI and a running node never lose each other's keys,
and the file is replaced atomically with mode 0600.

Imports: standard library, `lightnode.errors`, `lightnode.config`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from lightnode.config.load import write_file_atomically
from lightnode.config.model import is_valid_id
from lightnode.config.validate import load_json_document, read_config_bytes
from lightnode.errors import API_KEY_PREFIX, ConfigError, LightnodeError

audit = logging.getLogger("lightnode.audit")

KEY_PREFIX = API_KEY_PREFIX
# 32 random bytes = 256 bits: far beyond any guessing, which is why a plain SHA-256 suffices.
KEY_RANDOM_BYTES = 32
UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Basic realm="lightnode"'),)
_ENTRY_KEYS = ("id", "hash", "admin", "serviceId", "label", "description", "createdBy", "createdOn", "expiry")


# A key anywhere in a text (a message, a log line), for `mask_secrets`.
_KEY_IN_TEXT = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]*", re.IGNORECASE)
# Percent-decoding rounds `looks_like_key` tries: a key may come encoded once or more.
_DECODE_ROUNDS = 4


def looks_like_key(text: str) -> bool:
    """True when `text` holds something shaped like a secret key (`lnk_...`), plain or percent-encoded.

    Key ids (`k` + hex) never do, so ids stay readable in logs and messages.
    """
    for _ in range(_DECODE_ROUNDS):
        if KEY_PREFIX in text.lower():
            return True
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return KEY_PREFIX in text.lower()


def mask_secrets(text: str) -> str:
    """`text` with every key-shaped word replaced by `<key>` (for logs and error messages, SPEC §9)."""
    return _KEY_IN_TEXT.sub("<key>", text)


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def fingerprint(key: str) -> str:
    """A short, non-reversible tag for logs: the first 8 hex digits of the key's digest."""
    return "sha256:" + digest_of(key).hex()[:8]


def is_loopback(client: str) -> bool:
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


HOW_TO_SEND: Final = "send the key as the HTTP Basic user name or as Authorization: Bearer KEY"


def unauthorized(authorization: bytes | None = None, key: str | None = None) -> LightnodeError:
    """401 Unauthorized. Its message is SPEC §3.4's (and DSS's) for every case; its
    detailedMessage says when no key came at all, or came in a way the node does not
    read (a header of another scheme, a bare key), so a caller whose key is right but
    sent wrongly is not told that the key is unknown. It never repeats what was sent."""
    detail = "Unknown API key"
    if key is None:
        raw = (authorization or b"").strip()
        if not raw:
            detail = f"No API key sent: {HOW_TO_SEND}"
        else:
            scheme = raw.partition(b" ")[0].decode("latin-1")
            if scheme.lower() in ("bearer", "basic"):
                detail = f"The Authorization header's {scheme} credentials hold no key: {HOW_TO_SEND}"
            elif b" " not in raw or looks_like_key(scheme):
                detail = f"The Authorization header holds no scheme: {HOW_TO_SEND}"
            else:
                detail = f"Authorization scheme {scheme[:20]!r} is not supported: {HOW_TO_SEND}"
    return LightnodeError("Unauthorized", "Unknown API key", detail, headers=UNAUTHORIZED_HEADERS)


# Refused requests are logged at most once per client in this many seconds, with a count
# of those left out: a client with a stale key retrying in a loop (or a scan) would
# otherwise write one line per request, rotating the log's history away in minutes.
AUTH_LOG_INTERVAL_S: Final = 10.0
_AUTH_LOG_CLIENTS: Final = 4096  # clients remembered at most; beyond, the table starts over


class FailureLog:
    """The audit lines of refused requests, at most one per client per AUTH_LOG_INTERVAL_S."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # client -> (time of its line, left out since)

    def warning(self, client: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(client)
        if last is not None and now - last[0] < AUTH_LOG_INTERVAL_S:
            self._last[client] = (last[0], last[1] + 1)
            return
        if last is None and len(self._last) >= _AUTH_LOG_CLIENTS:
            self._last.clear()
        self._last[client] = (now, 0)
        if last is not None and last[1]:
            fmt += " (and %d more refused from this client since its last line)"
            args = (*args, last[1])
        audit.warning(fmt, *args)


def presented_key(authorization: bytes | None) -> str | None:
    """The key in an Authorization header: Basic user name (or password if the user is empty), or Bearer."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == b"bearer":
        return value.decode("latin-1") or None
    if scheme != b"basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user or password or None


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One stored key: its public id and metadata, and the digest of the secret."""

    id: str
    digest: bytes
    admin: bool
    service_id: str | None
    label: str | None = None
    description: str | None = None
    created_by: str | None = None
    created_on: str = ""
    expiry: str | None = None  # ISO 8601 UTC, or None for no expiry

    def expired(self, now_s: float | None = None) -> bool:
        if self.expiry is None:
            return False
        return parse_time(self.expiry) <= (time.time() if now_s is None else now_s)

    def to_public_json(self) -> dict[str, Any]:
        """What `keys list` and GET keys show: never the key, never its digest."""
        return {
            "id": self.id,
            "admin": self.admin,
            "serviceId": self.service_id,
            "label": self.label,
            "description": self.description,
            "createdBy": self.created_by,
            "createdOn": self.created_on,
            "expiry": self.expiry,
            "expired": self.expired(),
        }

    def to_file_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hash": "sha256:" + self.digest.hex(),
            "admin": self.admin,
            "serviceId": self.service_id,
            "label": self.label,
            "description": self.description,
            "createdBy": self.created_by,
            "createdOn": self.created_on,
            "expiry": self.expiry,
        }


def parse_time(text: str) -> float:
    """An ISO 8601 time (naive = UTC, `Z` accepted) as epoch seconds. Raises ValueError."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def normalize_expiry(value: object) -> str | None:
    """None, epoch milliseconds (the DSS convention) or ISO 8601 -> ISO 8601 UTC.

    Raises:
        ValueError: anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"expiry: must be epoch milliseconds or an ISO 8601 time (got {value!r})")
    if isinstance(value, (int, float)):
        try:
            moment = datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # beyond datetime's years 1..9999, or NaN
            raise ValueError(f"expiry: epoch milliseconds out of range (got {value!r})") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromtimestamp(parse_time(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"expiry: not an ISO 8601 time: {value!r}") from None
    else:
        raise ValueError(f"expiry: must be epoch milliseconds or an ISO 8601 time (got {value!r})")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_keys_file(raw: object, *, source: str) -> tuple[KeyEntry, ...]:
    """Validate decoded keys.json: `{"keys": [entry, ...]}`.

    Raises:
        ConfigError: every problem with its JSON path.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise ConfigError(source, ['$: must be an object {"keys": [...]}'])
    problems: list[str] = [f"{k}: unknown key" for k in raw if k != "keys"]
    entries: list[KeyEntry] = []
    for index, item in enumerate(raw["keys"]):
        entry = _parse_entry(item, f"keys[{index}]", problems)
        if entry is not None:
            entries.append(entry)
    ids = [e.id for e in entries]
    problems.extend(f"keys: duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1}))
    if problems:
        raise ConfigError(source, problems)
    return tuple(entries)


def _parse_entry(item: object, path: str, problems: list[str]) -> KeyEntry | None:
    if not isinstance(item, dict):
        problems.append(f"{path}: must be an object")
        return None
    count = len(problems)
    problems.extend(f"{path}.{k}: unknown key" for k in item if k not in _ENTRY_KEYS)
    key_id, digest_text = item.get("id"), item.get("hash")
    if not is_valid_id(key_id):
        problems.append(f"{path}.id: invalid key id {key_id!r}")
    digest = b""
    if not isinstance(digest_text, str) or not digest_text.startswith("sha256:"):
        problems.append(f"{path}.hash: must be 'sha256:<64 hex digits>'")
    else:
        try:
            digest = bytes.fromhex(digest_text[len("sha256:"):])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            problems.append(f"{path}.hash: must be 'sha256:<64 hex digits>'")
    admin, service_id = item.get("admin", False), item.get("serviceId")
    if not isinstance(admin, bool):
        problems.append(f"{path}.admin: must be true or false")
    if service_id is not None and not is_valid_id(service_id):
        problems.append(f"{path}.serviceId: invalid service id {service_id!r}")
    if admin is False and service_id is None:
        problems.append(f"{path}: a key is either admin or for one serviceId")
    strings = {k: item.get(k) for k in ("label", "description", "createdBy", "createdOn")}
    problems.extend(f"{path}.{k}: must be a string" for k, v in strings.items() if v is not None and not isinstance(v, str))
    try:
        expiry = normalize_expiry(item.get("expiry"))
    except ValueError as exc:
        problems.append(f"{path}.{exc}")
        expiry = None
    if len(problems) != count:
        return None
    return KeyEntry(
        id=str(key_id), digest=digest, admin=bool(admin), service_id=service_id,
        label=strings["label"], description=strings["description"],
        created_by=strings["createdBy"], created_on=strings["createdOn"] or "", expiry=expiry,
    )


# keys.json grows with the keys (about 300 bytes each): room for some 200,000.
MAX_KEYS_FILE_BYTES = 64 << 20


class KeyStore:
    """The keys of one data directory, in memory, with the file as the truth."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: tuple[KeyEntry, ...] = ()
        self.failures = FailureLog()

    # ------------------------------------------------------------ reading

    def _read_file(self) -> tuple[KeyEntry, ...]:
        data = read_config_bytes(self.path, MAX_KEYS_FILE_BYTES)
        if data is None:
            return ()
        return parse_keys_file(load_json_document(data, str(self.path)), source=str(self.path))

    def load(self) -> KeyStore:
        """Read the file (a missing file means no keys). Raises ConfigError."""
        self._entries = self._read_file()
        return self

    def reload(self) -> ConfigError | None:
        """Hot reload: on a refused file the last good keys stay in force; returns the error."""
        try:
            self._entries = self._read_file()
        except ConfigError as exc:
            audit.error("keys refused, last good keys stay in force: %s", exc)
            return exc
        audit.info("keys reloaded from %s: %d keys", self.path, len(self._entries))
        return None

    def entries(self) -> tuple[KeyEntry, ...]:
        return self._entries

    def has_admin_keys(self) -> bool:
        """Whether an admin key is defined, expired or not (SPEC §9: loopback-only keyless access
        lasts until one is created, or comes back when all are deleted). An expiry locks
        its key out; it must not reopen the admin API to every local user."""
        return any(e.admin for e in self._entries)

    # ------------------------------------------------------- authentication

    def match(self, key: str | None) -> KeyEntry | None:
        """The entry whose digest equals the key's, compared in constant time over all entries."""
        if not key:
            return None
        digest = digest_of(key)
        found: KeyEntry | None = None
        for entry in self._entries:  # no early exit: the time does not tell which key matched
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        if found is not None and found.expired():
            return None
        return found

    def check_service_request(self, authorization: bytes | None, service_id: str, client: str) -> KeyEntry:
        """The key of a request to a private service, or raise 401 Unauthorized (logged)."""
        key = presented_key(authorization)
        entry = self.match(key)
        if entry is not None and entry.service_id == service_id:
            return entry
        reason = "no key" if key is None else f"key {fingerprint(key)} not valid for this service"
        self.failures.warning(client, "auth failure: service %s from %s: %s", service_id, client, reason)
        raise unauthorized(authorization, key)

    def check_admin_request(self, authorization: bytes | None, client: str) -> KeyEntry | None:
        """Admin API access: an admin key, or loopback while no admin key exists.

        Returns the admin key's entry, or None for loopback access without keys.

        Raises:
            LightnodeError: 401 Unauthorized, or 403 Forbidden off loopback without admin keys.
        """
        key = presented_key(authorization)
        if not self.has_admin_keys():
            if is_loopback(client):
                return None
            audit.warning("admin access refused from %s: no admin key exists, loopback only", client)
            raise LightnodeError("Forbidden", "The admin API answers on loopback only until an admin key exists")
        entry = self.match(key)
        if entry is not None and entry.admin:
            return entry
        reason = "no key" if key is None else f"key {fingerprint(key)} is not an admin key"
        self.failures.warning(client, "admin auth failure from %s: %s", client, reason)
        raise unauthorized(authorization, key)

    # ------------------------------------------------------------ mutations

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[KeyEntry]]:
        """Read-modify-write under the lock; the yielded list is written back if it changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".keys.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            current = list(self._read_file())
            before = list(current)
            yield current
            if current != before:
                payload = {"keys": [e.to_file_json() for e in current]}
                write_file_atomically(self.path, (json.dumps(payload, indent=2) + "\n").encode(), mode=0o600)
            self._entries = tuple(current)

    def create(
        self,
        *,
        admin: bool,
        service_id: str | None = None,
        label: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
        expiry: object = None,
    ) -> tuple[KeyEntry, str]:
        """Make a new key; returns its entry and the key itself (shown once, never stored).

        Raises:
            ValueError: neither or both of admin/service_id, or a bad expiry.
        """
        if admin == (service_id is not None):
            raise ValueError("a key is either an admin key or for one service")
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        entry = KeyEntry(
            id="k" + secrets.token_hex(6),
            digest=digest_of(key),
            admin=admin,
            service_id=service_id,
            label=label,
            description=description,
            created_by=created_by,
            created_on=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            expiry=normalize_expiry(expiry),
        )
        with self._locked() as entries:
            while any(e.id == entry.id for e in entries):
                entry = replace(entry, id="k" + secrets.token_hex(6))
            entries.append(entry)
        return entry, key

    def delete_by_id(self, key_id: str) -> KeyEntry:
        """Raises KeyError when no key has this id."""
        with self._locked() as entries:
            for index, entry in enumerate(entries):
                if entry.id == key_id:
                    return entries.pop(index)
        raise KeyError(key_id)

    def delete_by_key(self, key: str) -> KeyEntry:
        """Delete the key whose secret is `key`. Raises KeyError when none matches."""
        digest = digest_of(key)
        with self._locked() as entries:
            for index, entry in enumerate(entries):
                if hmac.compare_digest(entry.digest, digest):
                    return entries.pop(index)
        raise KeyError(fingerprint(key))
