"""The official DSS client (`dataikuapi`) against a real node: the URIs and calls its users write.

SPEC preamble: where the SPEC and the client disagree, the client's observable
behaviour wins. Other files use the client for their own subject (keys, admin API,
generations); this one holds what concerns the client itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dataikuapi
import pytest
from dataikuapi.utils import DataikuException

from lightnode.cli import main
from tests.conftest import write_service

pytestmark = pytest.mark.integration

ECHO = "def echo(**kw):\n    return kw\n"
SCALE = "def f(v=1):\n    return {'twice': v * 2}\n"


@pytest.fixture
def node_with_services(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Any, str, str]:
    root = tmp_path / "dss"
    write_service(root, "svc", {"echo": ECHO, "f": SCALE})
    write_service(root, "priv", {"p": SCALE}, extra={"auth": {"public": False}})
    assert main(["admin", "keys", "create", "--service", "priv", "--data-dir", str(root)]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["admin", "keys", "create", "--admin", "--data-dir", str(root)]) == 0
    admin_key = capsys.readouterr().out.strip()
    return node_factory(root), key, admin_key


# --------------------------------------------------------- base URI forms


@pytest.mark.parametrize("suffix", ["/", "//"])
def test_a_base_uri_ending_in_a_slash_reaches_the_public_api(node_with_services: Any, suffix: str) -> None:
    """The client's docstring gives the URI as `http://host:port/`; it then requests
    `//public/api/v1/...`. Leading repeated slashes are one slash."""
    node, key, _ = node_with_services
    client = dataikuapi.APINodeClient(node.url + suffix, "svc")
    answer = client.run_function("f", v=3)
    assert answer["response"] == {"twice": 6}
    assert answer["apiContext"]["serviceId"] == "svc"
    private = dataikuapi.APINodeClient(node.url + suffix, "priv", api_key=key)
    assert private.run_function("p", v=4)["response"] == {"twice": 8}
    with pytest.raises(DataikuException, match="^Unauthorized: "):
        dataikuapi.APINodeClient(node.url + suffix, "priv").run_function("p", v=4)
    with pytest.raises(DataikuException, match="^NotFound: Endpoint does not exist: nosuch"):
        client.run_function("nosuch")


@pytest.mark.parametrize("suffix", ["/", "//"])
def test_a_base_uri_ending_in_a_slash_reaches_the_admin_api(node_with_services: Any, suffix: str) -> None:
    node, _, admin_key = node_with_services
    admin = dataikuapi.APINodeAdminClient(node.url + suffix, admin_key)
    assert {"svc", "priv"} <= {service["id"] for service in admin.list_services()}
    assert admin.service("svc").list_generations()


def test_interior_empty_segments_stay_refused(node_with_services: Any) -> None:
    """Only the leading slashes are folded: an empty id in the middle names nothing."""
    node, _, _ = node_with_services
    status, _, raw = node.request("POST", "/public/api/v1//svc/f/run", b"{}")
    assert status == 404 and json.loads(raw)["errorType"] == "NotFound"
    status, _, raw = node.request("POST", "/public/api/v1/svc//f/run", b"{}")
    assert status == 404 and json.loads(raw)["errorType"] == "NotFound"


# ------------------------------------------- DSS verbs on a python-function


PRECISE = "NotFound: Endpoint echo of service svc is a python-function endpoint: call /public/api/v1/svc/echo/run"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.predict_record("echo", {"a": 1}),
        lambda c: c.predict_records("echo", [{"features": {"a": 1}}]),
        lambda c: c.forecast("echo", [{"a": 1}]),
        lambda c: c.predict_effect("echo", {"a": 1}),
        lambda c: c.predict_effects("echo", [{"features": {"a": 1}}]),
        lambda c: c.sql_query("echo", {"a": 1}),
        lambda c: c.lookup_record("echo", {"a": 1}),
        lambda c: c.lookup_records("echo", [{"data": {"a": 1}}]),
    ],
    ids=["predict", "predict-multi", "forecast", "predict-effect", "predict-effect-multi", "query",
         "lookup", "lookup-multi"],  # fmt: skip
)
def test_dss_model_calls_on_a_python_function_endpoint_say_to_call_run(
    node_with_services: Any, call: Any
) -> None:
    node, _, _ = node_with_services
    with pytest.raises(DataikuException) as caught:
        call(dataikuapi.APINodeClient(node.url, "svc"))
    assert str(caught.value) == PRECISE


def test_dss_model_calls_tell_nothing_of_what_the_caller_may_not_see(node_with_services: Any) -> None:
    node, key, _ = node_with_services
    url = node.url
    # An unknown service or endpoint: the path is not found, as before.
    with pytest.raises(DataikuException, match="^NotFound: Not found: /public/api/v1/nosvc/x/predict$"):
        dataikuapi.APINodeClient(url, "nosvc").predict_record("x", {})
    with pytest.raises(DataikuException, match="^NotFound: Not found: /public/api/v1/svc/nosuch/predict$"):
        dataikuapi.APINodeClient(url, "svc").predict_record("nosuch", {})
    # A private service without a valid key: the same answer, nothing about its endpoints.
    for client in (dataikuapi.APINodeClient(url, "priv"), dataikuapi.APINodeClient(url, "priv", api_key="nope")):
        with pytest.raises(DataikuException, match="^NotFound: Not found: /public/api/v1/priv/p/predict$"):
            client.predict_record("p", {})
    # With its key, the caller is told.
    with pytest.raises(DataikuException) as caught:
        dataikuapi.APINodeClient(url, "priv", api_key=key).predict_record("p", {})
    assert str(caught.value) == (
        "NotFound: Endpoint p of service priv is a python-function endpoint: call /public/api/v1/priv/p/run"
    )
    # Bad ids never reach a lookup: the plain answer.
    status, _, raw = node.request("POST", "/public/api/v1/../svc/predict", b"{}")
    assert status == 404 and json.loads(raw)["errorType"] == "NotFound"
