"""The query log: DATA_DIR/logs/queries.log, one JSON line per /run request (SPEC §10).

Keys: time (UTC, ISO 8601 with milliseconds), requestId, serviceId,
endpointId, generation, status, errorType, wait, execution,
functionInternal, total (microseconds), client, and params when
`logging.log_params` is true (the request's JSON object; a body that is not
JSON is logged as a string; a GET's query as its object).

Every /run request has its line, answered or not: one whose client went away
before its answer is status 499, errorType ClientGone (nginx's status for it),
with its wait and execution until then; one the HTTP layer refused before the
app (413 PayloadTooLarge) has its ids from the path, and no params.

The event loop never waits on the disk for a request: `observe()` only builds
the line and appends it to a buffer. The buffer is written with one
`os.write` from a loop timer FLUSH_INTERVAL_S later, or at once when it holds
FLUSH_BYTES, and on `close()` at shutdown (a write to the page cache takes
microseconds). The file is rotated by size, between two lines, like logging's
RotatingFileHandler (queries.log -> queries.log.1 -> ... ->
queries.log.<backups>); with no backups it is truncated instead. No file
grows past `max_bytes` unless a single line is longer. A queries.log removed
or moved away by someone else (an operator freeing space, logrotate) is
noticed at the next flush, one stat() per flush: the lines go to a new
queries.log, not to the old file, where they would be lost (a removed
logs/ directory is made again). A write
error drops the buffered lines, is logged (at most once per
ERROR_LOG_INTERVAL_S) and counted in `dropped_lines`; the node keeps serving.
Once the file takes lines again, how many were dropped is logged (a warning).

Imports: standard library, ujson and `observe.logsetup`; `http.app` for types only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import ujson

from lightnode.errors import holds_api_key
from lightnode.observe.logsetup import names_another_file

if TYPE_CHECKING:  # pragma: no cover
    from lightnode.http.app import RequestRecord

log: Final = logging.getLogger("lightnode.querylog")

# Lines wait at most this long in memory: short enough for `tail -f`, long
# enough that a busy node writes many lines per system call.
FLUSH_INTERVAL_S: Final = 0.2
# A buffer this large is written at once (about 300 lines), bounding memory
# under load without turning each request into a system call.
FLUSH_BYTES: Final = 64 * 1024
ERROR_LOG_INTERVAL_S: Final = 60.0
# JSON literals of the strings that repeat from line to line (ids, client
# addresses, errorTypes) are kept; the cache is emptied when it reaches this size.
LITERAL_CACHE_SIZE = 4096
# Written in place of a service or endpoint id that holds an API key (errors.holds_api_key).
KEY_AS_ID: Final = "<an API key>"
_MILLIS: Final = [f".{milli:03d}Z" for milli in range(1000)]


class QueryLog:
    """A request observer that writes the query log.

    Args:
        path: the log file (its directory is made if missing).
        loop: the node's loop, for the flush timer; None flushes only on
            size and close() (tests).
        max_bytes: rotate before the file would grow past this size.
        backups: rotated files kept (queries.log.1 is the newest).
        log_params: add the request's parameters to each line.

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(
        self,
        path: Path,
        *,
        loop: asyncio.AbstractEventLoop | None,
        max_bytes: int,
        backups: int,
        log_params: bool = False,
    ) -> None:
        self.path = path
        self._loop = loop
        self.max_bytes = max_bytes
        self.backups = backups
        self.log_params = log_params
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._fd = -1
        self._size = 0
        self._inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open file
        self._second = -1
        self._second_text = ""
        self._literals: dict[str, str] = {}
        self._fragments: dict[tuple[str, str, str, int, str | None], str] = {}
        self._last_error_at = -ERROR_LOG_INTERVAL_S
        self.dropped_lines = 0
        self._dropped_unsaid = 0  # dropped since the file last took lines
        self._lines_written = 0  # by the current flush, for the count of those dropped
        self._open()

    # --------------------------------------------------------------- observer

    def observe(self, record: RequestRecord) -> None:
        # Formatted by hand: twice as fast as building a dict for ujson.dumps, and
        # every string still goes through json_string(), so the line is valid JSON.
        # This runs once per request, so the common cases are inlined: the keys from
        # serviceId to errorType come from one cached fragment per (service,
        # endpoint, generation, status, errorType), the client's literal is cached,
        # the id needs no escape and the second is the line before's.
        millis = int(record.time * 1000)
        if millis // 1000 != self._second:
            self._time_text(record.time)  # sets _second and _second_text
        request_id = record.request_id
        if '"' not in request_id and "\\" not in request_id and request_id.isprintable():
            quote = '"'  # the id as it is, quoted in the line's one f-string
        else:
            request_id, quote = json_string(request_id), ""
        key = (record.service_id, record.endpoint_id, record.generation, record.status,
               record.error_type)  # fmt: skip
        middle = self._fragments.get(key)
        if middle is None:
            middle = self._fragment(key)
        client = self._literals.get(record.client) or self._literal(record.client)
        end = ',"params":' + params_json(record.params) + "}\n" if self.log_params else "}\n"
        data = (
            f'{{"time":"{self._second_text}{_MILLIS[millis % 1000]}",'
            f'"requestId":{quote}{request_id}{quote},'
            f'{middle}"wait":{record.wait_us},"execution":{record.execution_us},'
            f'"functionInternal":{record.function_us},"total":{record.total_us},'
            f'"client":{client}{end}'
        ).encode()
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL_S, self._on_timer)

    def _fragment(self, key: tuple[str, str, str, int, str | None]) -> str:
        """The keys serviceId .. errorType of a line, with a trailing comma (cached)."""
        service_id, endpoint_id, generation, status, error_type = key
        literal = self._literal
        # An API key typed as an id (so a 404: a service of such an id keeps its name) is
        # not written to the log.
        if status == 404:
            if holds_api_key(service_id):
                service_id = KEY_AS_ID
            if holds_api_key(endpoint_id):
                endpoint_id = KEY_AS_ID
        fragment = (
            f'"serviceId":{literal(service_id)},"endpointId":{literal(endpoint_id)},'
            f'"generation":{literal(generation)},"status":{int(status)},'
            f'"errorType":{"null" if error_type is None else literal(error_type)},'
        )
        if len(self._fragments) >= LITERAL_CACHE_SIZE:
            self._fragments.clear()
        self._fragments[key] = fragment
        return fragment

    def _literal(self, text: str) -> str:
        cached = self._literals.get(text)
        if cached is None:
            if len(self._literals) >= LITERAL_CACHE_SIZE:
                self._literals.clear()
            cached = self._literals[text] = json_string(text)
        return cached

    def _time_text(self, wall_s: float) -> str:
        second, milli = divmod(int(wall_s * 1000), 1000)
        if second != self._second:  # one strftime per second, not per request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text + _MILLIS[milli]

    # ------------------------------------------------------------------ output

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every buffered line now: one write, more only when the file rotates."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        lines = self._buffer
        self._buffer = []
        self._buffered = 0
        self._lines_written = 0
        try:
            if self._fd >= 0 and names_another_file(self.path, self._inode):
                os.close(self._fd)
                self._fd = -1
            if self._fd < 0:
                self._open()
            self._write_lines(lines)
        except OSError as exc:
            dropped = len(lines) - self._lines_written
            self.dropped_lines += dropped
            self._dropped_unsaid += dropped
            now = time.monotonic()
            if now - self._last_error_at >= ERROR_LOG_INTERVAL_S:
                self._last_error_at = now
                log.error(
                    "query log %s: %s (%d lines dropped so far)", self.path, exc, self.dropped_lines
                )
            return
        if self._dropped_unsaid:
            # The error was logged when lines were first dropped, maybe to a server log on
            # the same full disk: the gap in the file is said where it ends as well.
            log.warning(
                "query log %s: writing again; %d lines were dropped while it could not be written",
                self.path, self._dropped_unsaid,
            )  # fmt: skip
            self._dropped_unsaid = 0

    def _write_lines(self, lines: list[bytes]) -> None:
        """Write `lines`, rotating between two lines whenever the next would pass max_bytes.

        Before a rotation the file's size is read again (one fstat, only then): logrotate's
        copytruncate empties the file in place, and the count kept since the last write
        would rotate the next lines into queries.log.1 as if the file were full.
        """
        start = 0
        pending = 0
        size_read = False
        for index, line in enumerate(lines):
            if not size_read and self._size + pending + len(line) > self.max_bytes:
                size_read = True
                self._size = os.fstat(self._fd).st_size  # truncated in place meanwhile?
            if self._size + pending + len(line) > self.max_bytes and self._size + pending > 0:
                if pending:
                    self._write_all(b"".join(lines[start:index]))
                    self._lines_written += index - start
                self._rotate()
                start, pending = index, 0
            pending += len(line)
        if pending:
            self._write_all(b"".join(lines[start:]) if start else b"".join(lines))
            self._lines_written += len(lines) - start

    def close(self) -> None:
        """Flush and close; later lines reopen the file."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write_all(self, data: bytes) -> None:
        """Write whole lines. A write error (a full disk) after part of them is written
        leaves the whole lines, counted in _lines_written, and cuts the part of a line
        that followed: the next line written must start a line of its own."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                written = os.write(self._fd, view[done:])
                self._size += written
                done += written
        except OSError:
            if done:
                self._lines_written += data.count(b"\n", 0, done)
                partial = done - (data.rfind(b"\n", 0, done) + 1)
                if partial:
                    try:  # shrinking a file needs no space
                        size = os.fstat(self._fd).st_size - partial
                        os.ftruncate(self._fd, size)
                        self._size = size
                    except OSError:
                        pass
            raise

    def _open(self) -> None:
        os.makedirs(self.path.parent, exist_ok=True)  # after `rm -rf logs`
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        stat = os.fstat(self._fd)
        self._size = stat.st_size
        self._inode = (stat.st_dev, stat.st_ino)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._open()


def json_string(text: str) -> str:
    """`text` as a JSON string literal (ids and addresses almost never need escaping)."""
    if '"' not in text and "\\" not in text and text.isprintable():
        return f'"{text}"'
    return str(ujson.dumps(text, escape_forward_slashes=False))


def params_json(body: bytes) -> str:
    """The request body as JSON for `params`: its own JSON value if it has one, else a string."""
    if not body:
        return "{}"
    try:
        return str(ujson.dumps(ujson.loads(body), escape_forward_slashes=False, allow_nan=False))
    except (ValueError, OverflowError):  # not JSON, or a value JSON cannot write back (1e999)
        return str(ujson.dumps(body.decode("utf-8", "replace"), escape_forward_slashes=False))
