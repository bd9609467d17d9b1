"""The server log: text or JSON lines (`logging.format`, SPEC §8), to stderr and logs/lightnode.log.

logs/lightnode.log rotates by size; a file removed or moved away by someone else
(an operator freeing space, logrotate) is reopened at the next line, as the
query log does, rather than written on until a size rotation that a quiet server
log may never reach; a removed logs/ directory is made again.

A line that concerns a request carries its id: code that logs about a request
passes `extra={"request_id": ...}` (see `request_extra`), and both formats
show it, text as `[req <id>]` after the logger name, JSON as `"requestId"`.
JSON lines are one object each: time (UTC, ISO 8601 with milliseconds),
level, logger, message, requestId when one applies, exception when there is
a traceback. Newlines inside a message stay inside its JSON string, so one
record is always one line.

Imports: standard library, ujson and `config.model` only.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import IO

import ujson

from lightnode.config.model import LoggingSettings

SERVER_LOG = "lightnode.log"
# The server log rotates like the query log's defaults: 5 x 50 MB at most.
SERVER_LOG_MAX_BYTES = 50 * 1024 * 1024
SERVER_LOG_BACKUPS = 5
# A server log that cannot be written (a full disk) is said on stderr at most this often.
WRITE_ERROR_REPORT_S = 60.0
# The file-event library's logger (config/watch.py): its INFO lines are dropped, see setup_logging.
WATCH_LIBRARY_LOGGER = "watchfiles"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


# Control characters (but tab) as escapes, for `one_line`.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0A, 0x20), 0x7F)}


def one_line(text: str) -> str:
    """`text` with its control characters (but tab) as escapes: what the node writes to
    its logs from outside (a user's output, an id decoded from a request path) can then
    neither forge a line nor write NULs or terminal escape sequences."""
    return text if text.isprintable() else text.translate(_CONTROLS)


def request_extra(request_id: str) -> dict[str, str]:
    """The `extra=` argument that tags a log record with a request id."""
    return {"request_id": request_id}


def _utc_iso(created: float) -> str:
    second = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{stamp}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger> [req <id>]: <message>`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [req {request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["requestId"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return str(ujson.dumps(entry, ensure_ascii=False, escape_forward_slashes=False))
        except UnicodeEncodeError:  # a lone surrogate: \u-escape everything instead
            return str(ujson.dumps(entry, escape_forward_slashes=False))


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for `logging.format` ("text" or "json")."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


class ServerLogHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that reopens its file once the path names another file (or none).

    One stat() per record: about 1 µs, against some 200 µs that RotatingFileHandler
    already spends on a record (its size check, write and flush; measured on a user
    output flood's lines).

    A file that cannot be written (a full disk) is said on stderr in one line at most
    once per WRITE_ERROR_REPORT_S, not in logging's traceback per record, which on a
    busy node would flood the journal; every record still goes to stderr by the other
    handler. The file is reopened at the next record, and once it takes lines again its
    first line says how many it missed.
    """

    _inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open stream
    _unwritten = 0  # records that did not reach the file since it last took one
    _write_error = ""  # why, for the line that counts them
    _failed = False  # set by handleError during one write
    _reported_at = float("-inf")  # monotonic time of the last report on stderr

    def _open(self) -> io.TextIOWrapper:
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)  # after `rm -rf logs`
        stream = super()._open()
        stat = os.fstat(stream.fileno())
        self._inode = (stat.st_dev, stat.st_ino)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None and names_another_file(self.baseFilename, self._inode):
            stream, self.stream = self.stream, None  # the next write opens the path anew
            stream.close()
        if self._unwritten:
            missed = logging.LogRecord(
                "lightnode", logging.WARNING, __file__, 0,
                "%s: %d lines were not written (%s); see stderr (the journal) for them",
                (self.baseFilename, self._unwritten, self._write_error), None,
            )  # fmt: skip
            missed.created = record.created
            _end_partial_line(self.baseFilename)
            if not self._write(missed):
                self._unwritten += 1  # still failing: this record would fail as well
                return
            self._unwritten = 0
        if not self._write(record):
            self._unwritten += 1

    def _write(self, record: logging.LogRecord) -> bool:
        """RotatingFileHandler.emit; False if the file did not take the record."""
        self._failed = False
        super().emit(record)
        return not self._failed

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a fault of the record (a bad format): logging's report
            super().handleError(record)
            return
        self._failed = True
        self._write_error = exc.strerror or str(exc)
        stream, self.stream = self.stream, None  # its buffer may hold part of a line: reopen
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
        now = time.monotonic()
        if now - self._reported_at >= WRITE_ERROR_REPORT_S:
            self._reported_at = now
            sys.stderr.write(
                f"lightnode: cannot write {self.baseFilename}: {self._write_error}"
                f" ({self._unwritten + 1} lines not written so far; every line still goes to stderr)\n"
            )


def _end_partial_line(path: str) -> None:
    """End the part of a line that a full disk left at the end of `path`, if any."""
    try:
        with open(path, "rb+") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
    except OSError:
        pass  # the record's own write says why


def names_another_file(path: str | Path, inode: tuple[int, int]) -> bool:
    """Whether `path` no longer names the open file whose (st_dev, st_ino) is `inode`:
    removed, or moved away (and maybe re-created). Used by this handler and the query log."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: keep the open file
    return (stat.st_dev, stat.st_ino) != inode


def setup_logging(
    settings: LoggingSettings, logs_dir: Path | None, *, stream: IO[str] | None = None
) -> None:
    """Route the root logger to `stream` (stderr) and logs_dir/lightnode.log.

    Replaces any handler already installed, so calling it twice is harmless.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if logs_dir is not None:
        handlers.append(
            ServerLogHandler(logs_dir / SERVER_LOG, maxBytes=SERVER_LOG_MAX_BYTES, backupCount=SERVER_LOG_BACKUPS)
        )
    formatter = make_formatter(settings.format)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # The config watcher's library logs "N changes detected" at INFO for each batch of
    # file events: a line per deploy step and per tuning write, which the node's own
    # line about the change says better. Its warnings stay; `level: debug` shows all.
    debug = root.getEffectiveLevel() <= logging.DEBUG
    logging.getLogger(WATCH_LIBRARY_LOGGER).setLevel(logging.NOTSET if debug else logging.WARNING)
