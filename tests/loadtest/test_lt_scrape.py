"""The tiny Prometheus text parser and the per-endpoint pool sample."""

from __future__ import annotations

import asyncio

from lt_tiny_server import TinyServer

from loadtest.plan import Target
from loadtest.scrape import Scraper, parse_labels, parse_samples, pool_sample

TEXT = """\
# HELP lightnode_pipelines Pipelines by state
# TYPE lightnode_pipelines gauge
lightnode_pipelines{service="bench",endpoint="add",state="idle"} 2
lightnode_pipelines{endpoint="add",service="bench",state="busy"} 3.0
lightnode_pipelines{service="bench",endpoint="add",state="starting"} 1 1700000000000
lightnode_pipelines{service="bench",endpoint="add",state="stopping"} 1
lightnode_pipelines{service="bench",endpoint="spin",state="busy"} 8
lightnode_pipelines_total{service="bench",endpoint="add"} 99
lightnode_queue_length{service="bench",endpoint="add"} 4
lightnode_requests_total{service="bench",endpoint="add",status="200"} 12345
"""


def test_pool_sample_of_one_endpoint() -> None:
    sample = pool_sample(TEXT, "bench", "add")
    assert sample == {
        "pipelines": {"idle": 2, "busy": 3, "starting": 1, "stopping": 1},
        "allocated": 6,
        "queue": 4,
    }
    assert pool_sample(TEXT, "bench", "spin") == {
        "pipelines": {"busy": 8},
        "allocated": 8,
        "queue": None,
    }
    assert pool_sample(TEXT, "bench", "nope") is None


def test_labels_with_escapes_and_bad_labels() -> None:
    assert parse_labels('a="x",b="y \\"q\\" \\\\ z"') == {"a": "x", "b": 'y "q" \\ z'}
    assert parse_labels('a="x",') == {"a": "x"}
    assert parse_labels("") == {}
    assert parse_labels("a=x") is None


def test_garbage_is_skipped_not_fatal() -> None:
    text = "\n".join(
        [
            "<html>404 not found</html>",
            'lightnode_pipelines{service="bench",endpoint="add",state="idle"} NaN',
            'lightnode_pipelines{service="bench",endpoint="add",state="idle" 2',
            'lightnode_pipelines{service=bench,endpoint="add",state="busy"} 2',
            'lightnode_pipelines{service="bench",endpoint="add",state="busy"} two',
            'lightnode_queue_length{service="bench",endpoint="add"} 5',
            "\x00\xff binary",
        ]
    )
    assert parse_samples(text) == [
        ("lightnode_queue_length", {"service": "bench", "endpoint": "add"}, 5.0)
    ]
    assert pool_sample(text, "bench", "add") == {"pipelines": None, "allocated": None, "queue": 5}
    assert pool_sample("", "bench", "add") is None


def test_scraper_against_a_server_and_a_404() -> None:
    server = TinyServer()
    url = server.start()
    try:
        scraper = Scraper(Target.parse(url), "bench", "add")
        asyncio.run(scraper.scrape_once(0.5))
        missing = Scraper(Target.parse(url + "/nothing-here"), "bench", "add")
        asyncio.run(missing.scrape_once(0.5))
    finally:
        server.stop()
    assert scraper.samples == [
        {"pipelines": {"idle": 1, "busy": 2, "starting": 0}, "allocated": 3, "queue": 3, "t": 0.5}
    ]
    assert scraper.status() == {"ok": 1, "failed": 0, "last_error": None}
    assert missing.samples == [] and missing.failed == 1
    assert "404" in (missing.last_error or "")


def test_scraper_tolerates_a_closed_port() -> None:
    scraper = Scraper(Target.parse("http://127.0.0.1:1"), "bench", "add")
    asyncio.run(scraper.scrape_once(0.0))
    assert scraper.failed == 1 and scraper.samples == []


def test_a_metrics_route_that_never_answers_says_so() -> None:
    """The summary read "pool not scraped: TimeoutError: " (the exception has no text)."""
    import socket

    with socket.socket() as silent:  # accepts in the kernel, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        target = Target.parse(f"http://127.0.0.1:{silent.getsockname()[1]}")
        scraper = Scraper(target, "bench", "add")
        asyncio.run(scraper.scrape_once(0.0))
    assert scraper.failed == 1
    assert scraper.last_error == "/metrics did not answer within 0.9 s"
