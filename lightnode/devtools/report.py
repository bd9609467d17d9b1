"""Rendering of dev/test results: readable tables for a terminal, a JSON report for CI.

Pure: takes `LoadReport` and `QueryOutcome` values, returns text or dicts.
Imports: standard library, devtools.expect, devtools.session (its value types).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightnode.devtools.expect import MISSING, Mismatch, render_diff, show
from lightnode.devtools.session import LoadReport, QueryOutcome
from lightnode.worker import runtime

RUNTIME_FILE = str(Path(runtime.__file__).resolve())

RESULT_CHARS = 70  # the result column of the query table is cut to this
DETAIL_LINES = 40  # longest traceback or error detail printed under a row

# `lightnode test` exit codes (documented in its --help).
EXIT_OK = 0
EXIT_QUERY_FAILED = 1
EXIT_USAGE = 2
EXIT_LOAD_FAILED = 3
EXIT_TERMINATED = 128 + 15  # stopped by SIGTERM, as a shell reports it
EXIT_INTERRUPTED = 128 + 2  # stopped by SIGINT (Ctrl-C)


def exit_code(report: LoadReport, outcomes: Sequence[QueryOutcome]) -> int:
    if not report.ok:
        return EXIT_LOAD_FAILED
    if any(not o.passed for o in outcomes):
        return EXIT_QUERY_FAILED
    return EXIT_OK


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def render_load(report: LoadReport) -> str:
    """Which endpoints load: one row each, with the error and its traceback below a failure."""
    if report.problem is not None:
        kept = f" (still serving {report.generation})" if report.generation else ""
        return f"service.json is invalid{kept}:\n{_indent(report.problem, '  ')}"
    lines = [f"service {report.service_id} from {report.src_dir} (generation {report.generation})"]
    rows: list[list[str]] = []
    details: dict[int, str] = {}
    for status in report.endpoints:
        if status.loaded:
            started = f"started in {status.start_ms:.0f} ms" if status.start_ms is not None else ""
            rows.append([status.endpoint_id, "ok", started])
        else:
            first, _, rest = (status.error or "").partition("\n")
            rows.append([status.endpoint_id, "FAILED", first])
            detail = "\n".join(filter(None, [rest.strip("\n"), user_traceback(status.traceback or "")]))
            if detail:  # none for a hung init or a missing interpreter: no empty line under the row
                details[len(rows)] = detail
    lines += _with_details(table(["ENDPOINT", "LOADS", "DETAIL"], rows), details)
    return "\n".join(lines)


def render_queries(outcomes: Sequence[QueryOutcome]) -> str:
    """The test queries: status, latency, verdict and result; diffs and errors below."""
    if not outcomes:
        return "no test queries"
    rows: list[list[str]] = []
    details: dict[int, str] = {}
    for o in outcomes:
        status = str(o.status) if o.status else "-"
        latency = f"{o.latency_ms:.1f} ms" if o.latency_ms is not None else "-"
        rows.append([o.endpoint_id, o.name, status, latency, _verdict(o), _result(o)])
        detail = _detail(o)
        if detail:
            details[len(rows)] = detail
    lines = _with_details(table(["ENDPOINT", "QUERY", "STATUS", "LATENCY", "VERDICT", "RESULT"], rows), details)
    return "\n".join(lines)


def render_summary(report: LoadReport, outcomes: Sequence[QueryOutcome]) -> str:
    if report.problem is not None:
        return "FAILED: service.json is invalid"
    failed_loads = [e.endpoint_id for e in report.endpoints if not e.loaded]
    passed = sum(o.passed for o in outcomes)
    text = (f"{len(report.endpoints)} endpoint(s), {len(failed_loads)} failing to load; "
            f"{len(outcomes)} test quer{'y' if len(outcomes) == 1 else 'ies'}, {passed} passed")
    return ("OK: " if exit_code(report, outcomes) == EXIT_OK else "FAILED: ") + text


def _verdict(o: QueryOutcome) -> str:
    if o.skipped:
        return "skipped"
    if o.interrupted:
        return "INTERRUPTED"
    if o.passed:
        return "ok"
    return "MISMATCH" if o.mismatches else "FAILED"


def _result(o: QueryOutcome) -> str:
    if o.skipped:
        return o.error or ""
    body = o.body
    if o.status == 200 and isinstance(body, dict):
        return show(body.get("response"), RESULT_CHARS) if "response" in body else "(empty response)"
    text = o.error or show(body, RESULT_CHARS)
    return text if len(text) <= RESULT_CHARS else text[: RESULT_CHARS - 3] + "..."


def _detail(o: QueryOutcome) -> str:
    if o.mismatches:
        return "expect differs:\n" + render_diff(list(o.mismatches), indent="  ")
    if not o.passed and not o.skipped and isinstance(o.body, dict):
        # in dev mode detailedMessage holds the message and the function's traceback
        detailed = str(o.body.get("detailedMessage") or o.body.get("message") or "")
        if detailed and detailed != _result(o):
            return user_traceback(detailed)
    return ""


_FRAME = re.compile(r'^(\s*)File "([^"]*)", line \d+')


def user_traceback(text: str) -> str:
    """A traceback without the frames of lightnode's worker runtime and importlib,
    so the developer's own frames stand out."""
    out: list[str] = []
    skip_indent: int | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None and indent > skip_indent:
            continue  # the skipped frame's source line and carets
        skip_indent = None
        match = _FRAME.match(line)
        if match and (match.group(2) == RUNTIME_FILE or match.group(2).startswith("<frozen ")):
            skip_indent = len(match.group(1))
            continue
        out.append(line)
    return "\n".join(out)


def _with_details(lines: list[str], details: dict[int, str]) -> list[str]:
    """Insert each row's detail (indented) under it; row i is lines[i] (lines[0] is the header)."""
    out = []
    for index, line in enumerate(lines):
        out.append(line)
        if index in details:
            out.append(_indent(_clip(details[index]), "      "))
    return out


def _clip(text: str) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) <= DETAIL_LINES:
        return "\n".join(lines)
    return "\n".join([*lines[:5], f"... ({len(lines) - DETAIL_LINES} lines cut)", *lines[-(DETAIL_LINES - 5):]])


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# ---------------------------------------------------------------------- JSON


def json_report(report: LoadReport, outcomes: Sequence[QueryOutcome]) -> dict[str, Any]:
    """The machine-readable form of one `lightnode test` run."""
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_endpoint.setdefault(o.endpoint_id, []).append(_query_json(o))
    code = exit_code(report, outcomes)
    return {
        "ok": code == EXIT_OK,
        "exitCode": code,
        "source": str(report.src_dir),
        "serviceId": report.service_id,
        "problem": report.problem,
        "endpoints": [
            {
                "id": e.endpoint_id,
                "loaded": e.loaded,
                "error": e.error,
                "traceback": e.traceback,
                "startMs": e.start_ms,
                "queries": by_endpoint.get(e.endpoint_id, []),
            }
            for e in report.endpoints
        ],
    }


def _query_json(o: QueryOutcome) -> dict[str, Any]:
    return {
        "name": o.name,
        "status": o.status or None,
        "latencyMs": o.latency_ms,
        "passed": o.passed,
        "skipped": o.skipped,
        "error": o.error,
        "answer": o.body,
        "mismatches": [_mismatch_json(m) for m in o.mismatches],
    }


def _mismatch_json(m: Mismatch) -> dict[str, Any]:
    out: dict[str, Any] = {"path": m.path, "description": m.describe()}
    if m.expected is not MISSING:
        out["expected"] = m.expected
    if m.actual is not MISSING:
        out["actual"] = m.actual
    return out
