"""The pipeline: one worker process that runs one endpoint's function.

STDLIB ONLY. This file is started by path (`python runtime.py FD_IN FD_OUT SPEC_JSON`)
with the endpoint's own interpreter, which may lack lightnode, so it imports
nothing from lightnode and must parse on Python 3.8 (no `match`, no `X | Y`
annotations evaluated at run time). It uses ujson when the interpreter has it.

The wire (defined here once; the daemon imports these names):

    frame  = HEADER (length: u32, kind: u8, value: i64, big-endian) + body (length bytes)

    parent -> worker   CALL        body: the request's JSON object (raw bytes), value: its start-by,
                                   CLOCK_MONOTONIC ns (0: none; see serve())
                       CALL_TAGGED body: the request id (ASCII, no newline), b"\n", then as CALL's;
                                   value: as CALL's. Output lines the call writes carry the id
                                   (see TaggedLines)
    worker -> parent   READY       body: {"pid", "function", "signature"}     (after init code ran)
                       INIT_ERROR  body: {"message", "traceback"}             (then exit EXIT_INIT_FAILED)
                       RESULT      body: the result as JSON (empty: None), value: µs in the function
                       ERROR       body: {"errorType", "message", "detailedMessage", "status"}, value: µs
                       NOT_STARTED body: empty, value: 0 (its start-by had passed) or
                                   NOT_STARTED_STOPPING (being killed: it starts no call any more)

Frames travel on two dedicated pipe fds, never on stdout/stderr, so `print()`
in user code cannot corrupt the channel; stdout and stderr go to the node's log.
The loop has the shape of CPython's `_process_worker`: read a frame, call, write
one answer. It exits when its input pipe reaches EOF (a stop, or the node is
gone), within EXIT_GRACE_S even if user code left a thread running, and ignores
SIGINT so the terminal's Ctrl-C reaches the node, which drains first.
"""

from __future__ import annotations

import datetime
import decimal
import faulthandler
import importlib.util
import inspect
import os
import re
import reprlib
import signal
import struct
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

try:  # optional speed-up; the standard library is enough
    import ujson as _json

    def _dumps_by_name(obj: Any) -> str:
        return _json.dumps(obj, ensure_ascii=False, escape_forward_slashes=False, allow_nan=False)

    # ujson parses keyword arguments slowly: about 0.5 µs of a 0.8 µs dumps of a small
    # result. Its positional form (ujson 5.8 to 6.1: ensure_ascii, encode_html_chars,
    # escape_forward_slashes, sort_keys, indent, allow_nan) is used where this ujson
    # gives the same text for every probe and refuses NaN the same way; a ujson whose
    # arguments come in another order keeps the keywords.
    _POSITIONAL = (False, False, False, False, 0, False)
    _PROBES = ({"a/b": "\u00e9\u2713/<&>", "f": [0.1 + 0.2, 1 / 3, 1e-300, 1e22, -0.0]}, [1, None, True], "x")

    def _keywords_work() -> bool:
        """Whether this ujson takes the keywords above: one before 3.0 (1.35 and 2.0, still
        pinned in old code environments) has no allow_nan, so that every answer would raise
        TypeError, and parses floats imprecisely by default. The standard library serves then."""
        try:
            _dumps_by_name(_PROBES[0])
        except Exception:
            return False
        return True

    if not _keywords_work():
        raise ImportError("this ujson lacks allow_nan: the standard library's json is used")

    def _positional_dumps_agrees() -> bool:
        try:
            for probe in _PROBES:
                if _json.dumps(probe, *_POSITIONAL) != _dumps_by_name(probe):
                    return False
            _json.dumps(float("nan"), *_POSITIONAL)
        except (OverflowError, ValueError):
            return True  # NaN refused: allow_nan=False took effect
        except Exception:
            return False  # another signature
        return False  # NaN written: the arguments do not mean what they should here

    if _positional_dumps_agrees():

        def _dumps(obj: Any) -> str:
            return _json.dumps(obj, *_POSITIONAL)

    else:  # pragma: no cover - a ujson whose positional arguments differ
        _dumps = _dumps_by_name

    _loads = _json.loads
except ImportError:  # pragma: no cover - exercised only in user environments without a usable ujson
    import json as _json  # type: ignore[no-redef]

    def _dumps(obj: Any) -> str:
        return _json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    _loads = _json.loads

HEADER = struct.Struct("!IBq")

CALL = 1
CALL_TAGGED = 2
READY = 10
INIT_ERROR = 11
RESULT = 12
ERROR = 13
NOT_STARTED = 14
NOT_STARTED_STOPPING = 1

# The most nested JSON a request body may be: ujson's own limit (JSON_MAX_OBJECT_DEPTH).
UJSON_MAX_DEPTH = 1024

# Exit status of a worker whose initialization failed (gunicorn's WORKER_BOOT_ERROR idea):
# the scheduler backs off instead of respawning in a storm.
EXIT_INIT_FAILED = 3

# How much one read of the call pipe asks for (a pipe holds 64 KiB by default).
READ_CHUNK_BYTES = 1 << 16

# Largest frame either side accepts; a request body is bounded far below by the node.
MAX_FRAME_BYTES = 1 << 31


# ---------------------------------------------------------------------------- framing


def encode_frame(kind: int, body: bytes = b"", value: int = 0) -> bytes:
    """Return the bytes of one frame."""
    return HEADER.pack(len(body), kind, value) + body


def write_frame(fd: int, kind: int, body: bytes = b"", value: int = 0) -> None:
    data = HEADER.pack(len(body), kind, value) + body
    written = os.write(fd, data)
    if written < len(data):  # a pipe takes up to 64 KiB whole; a larger frame goes in pieces
        rest = memoryview(data)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def read_exact(fd: int, size: int) -> Optional[bytes]:
    """Read exactly `size` bytes from `fd`; None at EOF."""
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Optional[Tuple[int, int, bytes]]:
    """Return (kind, value, body) or None at EOF."""
    head = read_exact(fd, HEADER.size)
    if head is None:
        return None
    length, kind, value = HEADER.unpack(head)
    if length > MAX_FRAME_BYTES:
        raise ValueError("frame too large: %d bytes" % length)
    body = read_exact(fd, length) if length else b""
    if body is None:
        return None
    return kind, value, body


class FrameDecoder:
    """Incremental decoder: feed bytes, get frames (the call pipe, read here).

    The node reads the answer pipe with its own reader (scheduler.worker_handle),
    compiled with the hot path.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Tuple[int, int, bytes]]:
        """Append `data`; return the list of complete (kind, value, body) frames."""
        buffer = self._buffer
        size = HEADER.size
        if not buffer and len(data) >= size:  # the usual read: exactly one whole frame
            length, kind, value = HEADER.unpack_from(data)
            if len(data) == size + length:
                return [(kind, value, data[size:])]
        buffer += data
        frames = []
        offset = 0
        while len(buffer) - offset >= size:
            length, kind, value = HEADER.unpack_from(buffer, offset)
            end = offset + size + length
            if end > len(buffer):
                break
            frames.append((kind, value, bytes(buffer[offset + size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


# ---------------------------------------------------------------- results to JSON


class NotSerializable(Exception):
    def __init__(self, type_name: str, path: str, reason: str = "") -> None:
        Exception.__init__(self, type_name, path, reason)
        self.type_name = type_name
        self.path = path
        self.reason = reason

    def describe(self) -> str:
        text = "%s at %s" % (self.type_name, self.path)
        return "%s (%s)" % (text, self.reason) if self.reason else text


# The exact types that ujson writes as they are. Anything else in a result goes
# through to_jsonable(), which converts it or refuses it: given any other object,
# ujson would call its toDict() or paste the text of its __json__() unchecked.
_SCALARS = frozenset((str, int, float, bool, type(None)))


def _plain(obj: Any) -> bool:
    """Whether `obj` holds only JSON's own types (and str keys): exact types, no subclasses.

    A small dict or list is looked at item by item; a long list first by the set of
    its items' types, at C speed. Raises RecursionError for a structure nested too
    deeply (or containing itself).
    """
    kind = type(obj)
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str or (type(value) not in _SCALARS and not _plain(value)):
                return False
        return True
    if kind in _SCALARS:
        return True
    if kind is list or kind is tuple:
        if len(obj) > 8 and set(map(type, obj)) <= _SCALARS:
            return True
        for value in obj:
            if type(value) not in _SCALARS and not _plain(value):
                return False
        return True
    return False


def _plain_deep(obj: Any) -> bool:
    """_plain() without recursion, for a result nested deeper than Python's recursion limit
    (ujson writes up to 1024 levels). A container met twice (shared, or containing itself)
    is left to to_jsonable(). _plain() stays recursive for every other result: on the small
    dict of a typical answer it takes half the time of this loop (0.19 against 0.38 µs)."""
    stack = [obj]
    seen = set()
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is not dict and kind is not list and kind is not tuple:
            return False
        if id(value) in seen:
            return False
        seen.add(id(value))
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return False
                stack.append(item)
        else:
            stack.extend(value)
    return True


def to_jsonable(obj: Any, path: str = "$") -> Any:
    """Convert a result to plain JSON types (SPEC §3.2), or raise NotSerializable.

    numpy/pandas values are recognised by duck typing (`tolist`, `to_dict`,
    `isoformat`) so that neither needs to be importable here. User code that runs
    meanwhile (a subclass's `items()` or `__iter__`, an `isoformat()`) and raises, or
    a dict that another thread changes while it is read, gives NotSerializable naming
    the value and what was raised: never an exception that would end the pipeline.
    """
    try:
        if obj is None or isinstance(obj, (str, bool)):
            return obj
        if isinstance(obj, (int, float)):
            return _number_to_jsonable(obj, path)
        if isinstance(obj, dict):
            out = {}
            for key, value in obj.items():
                name = key if isinstance(key, str) else _key_text(key, path)
                if name in out:  # {1: "a", "1": "b"}: one of the two would be lost without a word
                    reason = "the key %r is written %r, as is another key" % (key, name)
                    raise NotSerializable(_type_name(key), path, reason)
                out[name] = to_jsonable(value, "%s.%s" % (path, name))
            return out
        if isinstance(obj, (list, tuple, set, frozenset)):
            items = obj if not isinstance(obj, (set, frozenset)) else _sorted_if_possible(obj)
            return [to_jsonable(v, "%s[%d]" % (path, i)) for i, v in enumerate(items)]
        if isinstance(obj, decimal.Decimal):
            if not obj.is_finite():
                return None
            if obj == obj.to_integral_value():
                return int(obj)
            # Its digits as they are (a float would round 99999999999999999.99 to 1e+17):
            # a marked string, unquoted once the whole result is written (encode_result).
            return _DECIMAL_MARK + str(obj)
        if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
            # pandas' NaT is a datetime whose isoformat() is "NaT", no ISO 8601 date: null,
            # as NaN is and as pandas' own to_json() writes it.
            return None if _is_missing(obj) else obj.isoformat()
        return _foreign(obj, path)
    except (NotSerializable, RecursionError):
        raise  # RecursionError: encode_result() says "nested too deeply"
    except BaseException as exc:  # boundary: user code, SystemExit included (SPEC §3.4)
        raise NotSerializable(_type_name(obj), path, "converting it raised %s" % _raised_text(exc)) from None


def _number_to_jsonable(obj: Any, path: str) -> Any:
    if isinstance(obj, int):
        if obj.bit_length() > 64:  # JSON has no limit, but Python's int -> text has one
            try:
                str(obj)
            except ValueError:
                raise NotSerializable(_type_name(obj), path, "an integer with too many digits") from None
        return obj
    return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None  # NaN, infinities: null


def _key_text(key: Any, path: str) -> str:
    if key is None or isinstance(key, (bool, int, float, decimal.Decimal)):
        return _decimal_numbers(_dumps(to_jsonable(key, path)))  # a Decimal: its own digits
    if isinstance(key, (datetime.date, datetime.time)):
        return "null" if _is_missing(key) else key.isoformat()
    if (type(key).__module__ or "").split(".", 1)[0] in ("numpy", "pandas"):
        # A numpy scalar (np.unique's labels, a groupby's index): the text of its value, as
        # for the Python value it stands for ("3", "true", an ISO date).
        value = _foreign(key, "%s (a key)" % path)
        if value is None or isinstance(value, (bool, int, float)):
            return _dumps(value)
        if isinstance(value, str):
            return value
    raise NotSerializable(_type_name(key), "%s (a key)" % path)


def _sorted_if_possible(values: Any) -> List[Any]:
    """A set's items in order where they have one (a stable answer), else as they come."""
    try:
        return sorted(values)
    except Exception:  # TypeError, or whatever a user's __lt__ raises
        return list(values)


def _foreign(obj: Any, path: str) -> Any:
    """numpy / pandas values, converted without importing either."""
    module = type(obj).__module__ or ""
    root = module.split(".", 1)[0]
    if root in ("numpy", "pandas"):
        if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # DataFrame
            return to_jsonable(obj.to_dict(orient="records"), path)
        if hasattr(obj, "isoformat") and not _is_missing(obj):  # Timestamp, datetime64 via pandas
            return obj.isoformat()
        if _is_missing(obj):
            return None
        dtype = getattr(obj, "dtype", None)
        if root == "numpy" and getattr(dtype, "kind", None) == "M" and str(getattr(dtype, "str", ""))[-3:] in _SUB_MICROSECOND:
            # numpy datetime64 (scalar or array) in ns (pandas' unit) or finer: tolist()
            # gives ints there, datetimes (ISO strings; NaT None) down to µs. (A pandas
            # object's tolist() gives Timestamps, time zone included.)
            obj = obj.astype("datetime64[us]")
        if hasattr(obj, "tolist"):  # ndarray, numpy scalars, Series
            return _converted(obj, obj.tolist(), path)
        if hasattr(obj, "item"):
            return _converted(obj, obj.item(), path)
    raise NotSerializable(_type_name(obj), path)


def _converted(obj: Any, value: Any, path: str) -> Any:
    """to_jsonable() of `value`, the Python value numpy or pandas gave for `obj`; a
    refusal of that value itself names `obj`'s type (numpy.timedelta64, not the
    datetime.timedelta it became)."""
    if type(value) is type(obj):  # numpy.longdouble: its tolist() is itself
        raise NotSerializable(_type_name(obj), path, "it has no Python equivalent")
    try:
        return to_jsonable(value, path)
    except NotSerializable as exc:
        if exc.path == path and not exc.reason:
            raise NotSerializable(_type_name(obj), path) from None
        raise


# The ends of numpy's datetime64 dtype strings ("<M8[ns]") whose tolist() gives ints.
_SUB_MICROSECOND = ("ns]", "ps]", "fs]", "as]")


def _is_missing(obj: Any) -> bool:
    return type(obj).__name__ in ("NaTType", "NAType")


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else "%s.%s" % (module, cls.__qualname__)


# A fractional Decimal's text, marked for encode_result() to write as a JSON number. The
# mark holds random digits drawn at start, so no string a function returns can carry it
# (and neither encoder escapes any of its characters).
_DECIMAL_MARK = "lightnode-decimal-%s:" % os.urandom(8).hex()
_DECIMAL_STRING = re.compile('"%s([^"]*)"' % re.escape(_DECIMAL_MARK))  # no quote in a Decimal's text


def _decimal_numbers(text: str) -> str:
    """`text` (JSON) with each marked Decimal string ("<mark>12.50") written as its number."""
    return _DECIMAL_STRING.sub(r"\1", text)


def encode_result(result: Any) -> bytes:
    """JSON bytes of a result; b"" for None. Raises NotSerializable.

    A lone surrogate in a string (not valid Unicode, so not UTF-8) is written as
    its JSON escape, `\\udXXX`: it can only occur inside a JSON string.
    """
    if result is None:
        return b""
    try:
        try:
            plain = _plain(result)
        except RecursionError:
            plain = _plain_deep(result)
        except RuntimeError:  # a dict changed by another thread while looked at
            plain = False  # to_jsonable() reads it again, or names it
        if plain:
            try:
                return _dumps(result).encode("utf-8", "backslashreplace")
            except (TypeError, ValueError, OverflowError):
                pass  # NaN or an infinity (null, as to_jsonable() writes them), or nested too deeply
        text = _dumps(to_jsonable(result))
        if _DECIMAL_MARK in text:
            text = _decimal_numbers(text)
        return text.encode("utf-8", "backslashreplace")
    except NotSerializable:
        raise
    except RecursionError:
        raise NotSerializable(_type_name(result), "$", "nested too deeply, or contains itself") from None
    except Exception as exc:  # TypeError, ValueError, OverflowError from ujson; MemoryError
        raise NotSerializable(_type_name(result), "$", _exception_text(exc)) from exc


# ------------------------------------------------------------------------ binding


class Binder:
    """Checks a request's attributes against the function's parameters (SPEC §3.2)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name = _function_name(function)
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        self.signature_text = "%s%s" % (self.name, _signature_text(signature))
        self.accepts_any = signature is None
        names = set()
        required = []
        positional_only = []
        for param in signature.parameters.values() if signature is not None else ():
            if param.kind is param.VAR_KEYWORD:
                self.accepts_any = True
            elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
                if param.default is param.empty:
                    required.append(param.name)
            elif param.kind is param.POSITIONAL_ONLY and param.default is param.empty:
                positional_only.append(param.name)
        self.names = frozenset(names)
        self.required = tuple(required)
        self._required_set = frozenset(required)
        # Required positional-only parameters (`def f(a, /)`): no attribute can fill them,
        # so no call binds. Always missing, even when the body has the name: with **kwargs
        # the value would land there and the call's TypeError come back as a 500
        # FunctionError (which "may have run") instead of this 400.
        self.positional_only = tuple(positional_only)

    def problems(self, params: Dict[str, Any]) -> Optional[str]:
        """Return an InvalidParameters message, or None when the call binds."""
        keys = params.keys()
        if self._required_set <= keys and (self.accepts_any or keys <= self.names) and not self.positional_only:
            return None  # the usual case, in two set comparisons
        missing = [name for name in self.required if name not in params]
        unexpected = [] if self.accepts_any else sorted(
            k for k in params if k not in self.names and k not in self.positional_only
        )
        if not missing and not unexpected and not self.positional_only:
            return None
        parts = []
        if missing or self.positional_only:
            shown = ["%r (positional-only: it cannot be passed by name)" % n for n in self.positional_only]
            shown += [repr(n) for n in missing]
            parts.append("missing: " + ", ".join(shown))
        if unexpected:
            parts.append("unexpected: " + ", ".join(repr(n) for n in unexpected))
        return "Invalid parameters for %s: %s" % (self.signature_text, "; ".join(parts))


def _function_name(function: Callable[..., Any]) -> str:
    """The function's name; a functools.partial's function's; a callable instance's class's."""
    for candidate in (function, getattr(function, "func", None)):  # func: functools.partial
        name = getattr(candidate, "__name__", None)
        if isinstance(name, str):
            return name
    return type(function).__name__


class _Shown:
    """A default value as the signature shows it: its text, already made."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


# Texts of default values, bounded: `def f(x, table=TABLE)` with a lookup table of 100,000
# entries would otherwise put megabytes into every InvalidParameters message (and the READY
# frame, and the log). reprlib's Repr also stands in for a repr() that raises.
_DEFAULT_REPR = reprlib.Repr()


def _signature_text(signature: Optional[inspect.Signature]) -> str:
    """`(x, table={'0': 0, '1': 1, ...}, n=3)`: the signature with each default's text cut short."""
    if signature is None:
        return "(...)"
    try:
        shown = [
            param
            if param.default is param.empty
            else param.replace(default=_Shown(_DEFAULT_REPR.repr(param.default)))
            for param in signature.parameters.values()
        ]
        return str(signature.replace(parameters=shown))
    except Exception:  # an annotation whose text cannot be made
        return "(%s)" % ", ".join(signature.parameters)


# ------------------------------------------------------------------------- loading


def load_function(spec: Dict[str, Any]) -> Callable[..., Any]:
    """Run the endpoint's module (its initialization code) and return its function."""
    root = spec["root"]
    os.chdir(root)
    if root not in sys.path:
        sys.path.insert(0, root)
    code_path = os.path.join(root, spec["code"])
    module_name = os.path.splitext(os.path.basename(code_path))[0] or "endpoint"
    module_spec = importlib.util.spec_from_file_location(module_name, code_path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError("cannot load %s" % code_path)
    module = importlib.util.module_from_spec(module_spec)
    module.folders = list(spec.get("folders") or [])  # type: ignore[attr-defined]
    # Registered under its name, so that the service's other modules that import it get
    # this module, not a second copy; but never over a module imported already (by the
    # runtime: `time`, `os`, `re`...), as a plain interpreter never lets a file shadow one:
    # logging, or any later import, would get the endpoint's code instead.
    if module_name not in sys.modules:
        sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return _pick_function(module, spec.get("function"), code_path)


def _pick_function(module: Any, name: Optional[str], code_path: str) -> Callable[..., Any]:
    candidates = [
        value
        for key, value in vars(module).items()
        if not key.startswith("_")
        and inspect.isfunction(value)
        and getattr(value, "__module__", None) == module.__name__
    ]
    found = ", ".join(sorted(f.__name__ for f in candidates)) or "none"
    if name:
        function = getattr(module, name, None)
        if function is None or not callable(function):
            # A typo in "function": the names it could have meant.
            raise AttributeError("%s defines no function named %r (its public functions: %s)"
                                 % (code_path, name, found))
        return function  # type: ignore[no-any-return]
    if len(candidates) != 1:
        raise AttributeError(
            '%s: "function" is not set and the module must define exactly one public '
            "function (found: %s)" % (code_path, found)
        )
    return candidates[0]


# -------------------------------------------------------------------- user logging

# User code's log records at INFO and above go to stderr, that is to the node's log
# (SPEC §3.2), as in DSS's function workers: Python alone drops INFO (its root logger
# is at WARNING), so an init's `logging.info("model loaded")` would never be seen.
USER_LOG_LEVEL = 20  # logging.INFO


def _configure_logging(logging: Any) -> None:
    """Let records at USER_LOG_LEVEL through while user code has configured no handler.

    The root logger goes to USER_LOG_LEVEL, and so does Python's last-resort handler
    (stderr, used only while no handler is configured), with Python's own format,
    `LEVEL:logger:message`; the node adds time, endpoint and pid. User code that
    configures logging itself (`logging.basicConfig(...)`, its own handlers) still does:
    no handler is added. Left alone if something configured the root logger before.
    """
    root = logging.getLogger()
    if root.handlers or root.level != logging.WARNING:
        return
    root.setLevel(USER_LOG_LEVEL)
    last_resort = getattr(logging, "lastResort", None)
    if last_resort is not None:
        last_resort.setLevel(USER_LOG_LEVEL)
        last_resort.setFormatter(logging.Formatter(logging.BASIC_FORMAT))


class _ConfigureLoggingOnImport:
    """A meta path finder that configures `logging` once the first import of it ran.

    The runtime does not import logging itself (some 6 ms of every pipeline start, for a
    function that may never log); user code that logs imports it, at init or in a call.
    Once found it leaves sys.meta_path: later imports never see it.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:  # user code rearranged sys.meta_path
            pass
        spec = importlib.util.find_spec(name)  # the standard finders' spec
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None or isinstance(loader, type):  # a frozen or built-in module's shared loader
            return spec

        def exec_and_configure(module: Any) -> None:
            exec_module(module)
            try:
                _configure_logging(module)
            except Exception:  # boundary: the service's own `logging.py`, shadowing the standard one
                pass

        loader.exec_module = exec_and_configure  # type: ignore[union-attr]  # this spec's loader only
        return spec


def _route_user_logging() -> None:
    """Make user code's logging reach the node's log (see USER_LOG_LEVEL)."""
    logging = sys.modules.get("logging")
    if logging is not None:  # imported at interpreter start (a code env's sitecustomize)
        _configure_logging(logging)
    else:
        sys.meta_path.insert(0, _ConfigureLoggingOnImport())


# ------------------------------------------------------------ request ids in output

# A line of output written while a call runs begins with TAG_START, the call's request
# id and TAG_END; the node takes them off and logs the line with that id (`[req ID]`).
# ASCII's "start of heading" and "start of text": no text a user prints begins with
# them, and str.splitlines() does not split at them (it does at \x1c-\x1e).
TAG_START = "\x01"
TAG_END = "\x02"
_CALL_TAG = [None]  # type: List[Optional[bytes]]  # the running call's request id


def _running_tag() -> Optional[str]:
    """TAG_START + the running call's request id + TAG_END; None between calls."""
    request_id = _CALL_TAG[0]
    if request_id is None:
        return None
    return TAG_START + request_id.decode("ascii", "replace") + TAG_END


class TaggedLines:
    """sys.stdout and sys.stderr of a pipeline: each line begun while a call runs carries
    the call's request id (`_CALL_TAG`); lines written between calls go as they are.

    Everything but write() and writelines() is the wrapped stream's (fileno, flush,
    buffer, encoding, isatty...). Bytes written to `.buffer` or to the file descriptor
    itself (C code, subprocesses) carry no id; a line written partly before a call
    and partly during it carries none either.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._line_start = True  # the next character written begins a line

    def write(self, text: str) -> int:
        if not text:
            return 0
        tag = _running_tag()
        if tag is None:
            written = int(self._stream.write(text))
        else:
            self._stream.write((tag if self._line_start else "") + _tag_inner_lines(text, tag))
            written = len(text)
        self._line_start = text[-1] == "\n"
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _tag_inner_lines(text: str, tag: str) -> str:
    """`text` (not empty) with `tag` after each of its newlines but a last one."""
    if text[-1] == "\n":
        return text[:-1].replace("\n", "\n" + tag) + "\n"
    return text.replace("\n", "\n" + tag)


def _tag_lines(text: str) -> str:
    """`text` (whole lines) with each line tagged as the running call's, if one runs."""
    tag = _running_tag()
    if tag is None or not text:
        return text
    return tag + _tag_inner_lines(text, tag)


# ---------------------------------------------------------------------- the call


def call_once(binder: Binder, body: bytes, dev: bool) -> Tuple[int, bytes, int]:
    """Run one request; return (kind, body, µs in the function)."""
    try:
        params = _loads(body)
    except RecursionError:  # the standard library's json: as deep as the interpreter's stack
        message = "%s: nested too deep for this interpreter's json module" % _BAD_BODY
        return ERROR, _error("BadRequest", message, 400), 0
    except ValueError as exc:
        if "depth limit" in str(exc):  # ujson: "Reached object decoding depth limit"
            message = "%s: nested too deep: more than %d levels" % (_BAD_BODY, UJSON_MAX_DEPTH)
            return ERROR, _error("BadRequest", message, 400), 0
        params = None if body.strip() else {}  # an empty body: no parameters
        if params is None:
            return ERROR, _error("BadRequest", _BAD_BODY, 400, _parse_problem(body)), 0
    if not isinstance(params, dict):
        return ERROR, _error("BadRequest", _BAD_BODY, 400), 0
    problem = binder.problems(params)
    if problem is not None:
        return ERROR, _error("InvalidParameters", problem, 400), 0
    started = time.perf_counter()
    try:
        result = binder.function(**params)
    except BaseException as exc:  # boundary: user code, SystemExit included (SPEC §3.4)
        elapsed = int((time.perf_counter() - started) * 1e6)
        return ERROR, _function_error(exc, dev), elapsed
    elapsed = int((time.perf_counter() - started) * 1e6)
    try:
        return RESULT, encode_result(result), elapsed
    except NotSerializable as exc:
        message = "Result is not JSON-serializable: %s" % exc.describe()
        return ERROR, _error("ResultNotSerializable", message, 500), elapsed


_BAD_BODY = "Could not parse a JsonObject from request body"


def _parse_problem(body: bytes) -> Optional[str]:
    """For a body that begins as a JSON object but does not parse: why and where, in the
    standard library's words (ujson's say neither), for the detailedMessage. None for
    anything else: the node names what such a body is (a form, a JSON array...)."""
    if body.lstrip()[:1] != b"{":
        return None
    import json

    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return "%s: %s: line %d column %d (char %d)" % (_BAD_BODY, exc.msg, exc.lineno, exc.colno, exc.pos)
    except (ValueError, RecursionError):  # not UTF-8 (the node says so), or too deep
        return None
    return None  # the two parsers disagree: nothing more precise to say


def _error(error_type: str, message: str, status: int, detailed: Optional[str] = None) -> bytes:
    payload = {
        "errorType": error_type,
        "message": message,
        "detailedMessage": detailed if detailed is not None else message,
        "status": status,
    }
    return _dumps(payload).encode("utf-8", "backslashreplace")  # see encode_result


def _exception_text(exc: BaseException) -> str:
    """str(exc), or a placeholder when the exception's own __str__ raises (SystemExit too)."""
    try:
        return str(exc)
    except BaseException as broken:  # boundary: user code
        return "<str() of the exception raised %s>" % type(broken).__name__


def _raised_text(exc: BaseException) -> str:
    """`KeyError: 'x'`: the exception's class and text, for a message."""
    text = _exception_text(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _traceback_text(exc: BaseException, from_call: bool = False) -> str:
    """The exception's traceback as text (lines ending in newlines), or a placeholder line.

    from_call: leave out the first frame, call_once's own (the user code's start from the next).
    """
    tb = exc.__traceback__
    if from_call and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException as broken:  # boundary: its __str__ raised, say
        return "(no traceback: formatting it raised %s)\n" % type(broken).__name__


def _http_status(exc: BaseException) -> Tuple[int, str]:
    """The status of a FunctionError, and a note for detailedMessage when one was refused.

    An integer `http_status_code` of 400..599 sets it (SPEC §3.4), except 503: a 503
    from lightnode means the function did not run, which a load balancer may retry
    on another node (SPEC §12), while this function did run.
    """
    try:
        status = getattr(exc, "http_status_code", None)
    except BaseException:  # boundary: a property that raises, SystemExit included
        return 500, ""
    if not (isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599):
        return 500, ""
    if status == 503:
        return 500, (
            " (http_status_code 503 is answered as 500: a 503 from lightnode means"
            " that the function did not run)"
        )
    return status, ""


def _function_error(exc: BaseException, dev: bool) -> bytes:
    status, note = _http_status(exc)
    # "<class 'quote.MyError'>" as str(type(exc)) writes it, without calling a metaclass's __repr__
    message = "Failed to run function : <class '%s'> : %s" % (_type_name(exc), _exception_text(exc))
    detailed = message + note
    if dev:
        detailed = detailed + "\n" + _traceback_text(exc, from_call=True)
    else:
        _log_traceback(exc, time.monotonic())
    return _error("FunctionError", message, status, detailed)


# The answer carries a traceback in dev mode only (SPEC §3.4); outside it the operator
# finds it in the node's log (this process's stderr): one per TRACEBACK_LOG_INTERVAL_S
# per pipeline at most, so a function that always raises cannot flood the log.
TRACEBACK_LOG_INTERVAL_S = 10.0
_traceback_log = [float("-inf"), 0]  # [when the last one was written, calls that raised since]


def _log_traceback(exc: BaseException, now: float) -> None:
    """Write the traceback of a call that raised to stderr, unless one was written lately."""
    last, unshown = _traceback_log
    if now - last < TRACEBACK_LOG_INTERVAL_S:
        _traceback_log[1] = unshown + 1
        return
    _traceback_log[0], _traceback_log[1] = now, 0
    since = ""
    if unshown:
        since = " (%d more raised since the last traceback, not shown)" % unshown
    text = "a call raised; its traceback follows%s:\n%s" % (since, _traceback_text(exc, from_call=True))
    try:
        # Not sys.stderr: user code may replace it. Each line carries the request id.
        os.write(2, _tag_lines(text).encode("utf-8", "backslashreplace"))
    except OSError:
        pass


# ------------------------------------------------------------------------ process


def _die_with_parent(parent_pid: Optional[int]) -> None:
    """On Linux, ask the kernel to kill us when the node dies (pipe EOF is the other net)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # pragma: no cover - no libc, odd platform: EOF still ends us
            pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the node died before we could register


def _leave_if_forked(pid: int) -> None:
    """End a process that user code forked and that came back into this loop.

    Only the pipeline itself may read calls and write answers: a child that returned
    from os.fork() in the function (or in the initialization code) would answer a
    call a second time, and the node would take its answer for the next call's.
    Called once after initialization; after each call the loop checks the flag that
    `_note_fork` sets instead (a getpid() per call is a system call per request).
    """
    if _FORKED[0] or os.getpid() != pid:
        os.write(2, b"lightnode worker: a process forked by user code returned to the pipeline's loop: it exits\n")
        os._exit(0)


# Set in a child of user code's os.fork(), os.forkpty() or multiprocessing's fork: each
# runs the at-fork hooks. A fork made by C code that bypasses them (ctypes' libc.fork())
# is not seen after a call: only a getpid() per call would see it.
_FORKED = [False]


def _note_fork() -> None:
    _FORKED[0] = True


_KILL_NOTICE = [False]  # set by SIGUSR1: the node is about to kill this worker


def _on_kill_notice(signum: int, frame: Any) -> None:
    _KILL_NOTICE[0] = True


def serve(fd_in: int, fd_out: int, spec: Dict[str, Any]) -> int:
    """Initialise, say READY (or INIT_ERROR), then answer CALL frames until EOF."""
    pid = os.getpid()
    os.register_at_fork(after_in_child=_note_fork)
    try:
        function = load_function(spec)
        binder = Binder(function)
    except BaseException as exc:  # boundary: user init code, SystemExit included
        _leave_if_forked(pid)
        text = _traceback_text(exc)
        message = "%s: %s" % (type(exc).__name__, _exception_text(exc))
        payload = _dumps({"message": message, "traceback": text}).encode("utf-8", "backslashreplace")
        write_frame(fd_out, INIT_ERROR, payload)
        sys.stderr.write(text)
        sys.stderr.flush()
        return EXIT_INIT_FAILED
    _leave_if_forked(pid)
    info = {"pid": pid, "function": binder.name, "signature": binder.signature_text}
    write_frame(fd_out, READY, _dumps(info).encode())
    dev = bool(spec.get("dev"))
    # One read usually brings one call; with prefetch the next calls may already be in
    # the pipe (a fast endpoint's come several to a read), and each starts the moment
    # the one before it is answered.
    decoder = FrameDecoder()
    frames = []  # type: List[Tuple[int, int, bytes]]
    while True:
        while not frames:
            data = os.read(fd_in, READ_CHUNK_BYTES)
            if not data:
                return 0
            frames = decoder.feed(data)
        kind, start_by, body = frames.pop(0)
        tag = None
        if kind == CALL_TAGGED:
            cut = body.find(b"\n")
            tag = body[:cut]
            body = body[cut + 1 :]
        elif kind != CALL:
            sys.stderr.write("lightnode worker: unexpected frame kind %d\n" % kind)
            return 2
        if _KILL_NOTICE[0]:
            # Being killed: this call and those behind it are left to another pipeline.
            write_frame(fd_out, NOT_STARTED, b"", NOT_STARTED_STOPPING)
            return 0
        # A staged call's start-by, read after the previous answer was written: the node
        # takes a call back only when, at or after its start-by, it found that answer
        # missing, so this clock read comes later and the call is refused here
        # (scheduler: "Taking a staged request back"). monotonic_ns() is a vDSO call.
        if start_by and time.monotonic_ns() >= start_by:
            write_frame(fd_out, NOT_STARTED)
            continue
        _CALL_TAG[0] = tag
        try:
            answer_kind, answer, elapsed = call_once(binder, body, dev)
        finally:
            _CALL_TAG[0] = None
        if _FORKED[0]:
            _leave_if_forked(pid)
        write_frame(fd_out, answer_kind, answer, elapsed)


# Once the serving loop has ended (the node closed the call pipe to stop this pipeline,
# or died), the process ends within this many seconds even if user code left a
# non-daemon thread running (a heartbeat, a library's monitor): the interpreter's exit
# would wait for that thread for ever, and the node would SIGTERM the process only after
# 5 s, each stopped pipeline holding its memory meanwhile (many at once, as a pool
# under load stops and starts pipelines all the time). Threads that end within it leave
# the exit as it was: the atexit handlers run after them, for as long as they take.
EXIT_GRACE_S = 1.0


def _exit_within(grace_s: float, code: int) -> None:
    """End the process `grace_s` from now with `code` if the threads of user code still run then.

    The interpreter runs the atexit handlers once every non-daemon thread has ended;
    the first of them (the last registered: this one) calls the forced exit off.
    """
    import atexit
    import threading

    exiting = threading.Event()

    def leave() -> None:
        if exiting.wait(grace_s):
            return  # the threads ended: the normal exit goes on
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # user code may have replaced or closed it
                pass
        os._exit(code)

    threading.Thread(target=leave, name="lightnode-exit", daemon=True).start()
    atexit.register(exiting.set)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd_in, fd_out, spec = int(args[0]), int(args[1]), _loads(args[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(spec.get("parent_pid"))
    # SIGUSR1 dumps every thread's stack to stderr (the node's log) before an exec-timeout
    # kill, then (chained) marks the worker as stopping so that it never starts the call
    # the node may have prefetched into its pipe: the node gives that call to another pipeline.
    signal.signal(signal.SIGUSR1, _on_kill_notice)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=True)
    # Before user code runs: a handler it creates at import (logging.StreamHandler())
    # keeps the stream it found.
    sys.stdout = TaggedLines(sys.stdout)
    sys.stderr = TaggedLines(sys.stderr)
    _route_user_logging()
    code = serve(fd_in, fd_out, spec)
    _exit_within(EXIT_GRACE_S, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
