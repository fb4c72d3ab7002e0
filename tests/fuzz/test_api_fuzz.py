"""API fuzzing: every operation of the served OpenAPI document, with valid and invalid requests.

schemathesis (its Python API: ``schemathesis.openapi.from_url`` and each operation's
``as_strategy``, driven by Hypothesis; the pytest plugin's lazy loader does not run on pytest 9)
generates requests from ``GET /openapi.json`` of a real node, for every operation, in its positive
mode (requests the document says are valid) and its negative mode (requests it says are not).
Each answer must keep the contract:

- never a 5xx (a 503 ``NOT_AVAILABLE`` only where the contract promises it: ``at_seq`` beyond the
  node's seq), and never a hang;
- a status the document lists for the operation, and a body its schema allows (schemathesis'
  ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``);
- every error is ``{"error": {"code", "message"}}`` (plus an optional ``account_id``) with a code
  of :class:`coffer.core.errors.ErrorCode`;
- a rejected request (4xx) changes nothing: the audit head (seq, hash) is the same before and after,
  but for TCC tries that expired meanwhile, which the log's time may fire on any entry.

Generated bodies are now and then pushed to the edge of 64 bits (``_widen``): the log's encoding
stops there, and plain generation rarely gets so far.

Bounds: ``examples_per_operation`` x 20 operations x 2 modes, about 60 s on the 2-core CI machine.
``min_seq`` is lowered to the node's seq: a read ahead of the node waits 2 s before its 503, which
one test below checks once instead of paying it on every example.

Beside the fuzzing, fixed regressions for what it found first: an integer beyond 64 bits (an
amount, a limit, a precondition's version) or a balance that grows beyond 64 bits must be
rejected, and the node must keep taking writes and restart.
"""

import json
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from coffer.core.errors import ErrorCode
from coffer.server.openapi import openapi_document
from tests.fuzz.conftest import FuzzNode

examples_per_operation = 25
widen_chance_denominator = 4  # one body in 4 gets its amounts and integers pushed to the 64-bit edge
# The wire encoding (msgpack) holds integers in -2**63 .. 2**64 - 1; plain generation rarely reaches
# its edge, so some generated values are swapped for these, all valid by the document's schema.
edge_amounts = (
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "92233720368547758.07",
    "92233720368547758.08",
    "10",  # 10 at scale 18 is 10**19 minor units
    "1" + "0" * 39,
)
edge_integers = (2**63 - 1, 2**63, 2**64, 10**30)
request_timeout_s = 5.0  # any answer takes milliseconds here; longer is a hang
error_codes = frozenset(code.value for code in ErrorCode)
error_keys_required = {"code", "message"}
error_keys_allowed = {"code", "message", "account_id"}

_document = openapi_document()
operations = [(path, method.upper()) for path, item in _document["paths"].items() for method in item]
# Answers that never end (a feed): read up to their first line, then hang up.
streaming_operations = {("/v1/events/stream", "GET")}
# Answers that are not JSON and end: the Prometheus text.
text_operations = {("/metrics", "GET")}


def _has_inputs(path: str, method: str) -> bool:
    operation = _document["paths"][path][method.lower()]
    return bool(operation.get("parameters")) or "requestBody" in operation


cases = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
    for path, method in operations
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _has_inputs(path, method)  # nothing to make invalid otherwise
]


def _widen(value: Any, draw: st.DrawFn) -> Any:
    """``value`` with its amount strings and integers swapped for edge values, now and then."""
    if isinstance(value, dict):
        return {key: _widen(item, draw) for key, item in value.items()}
    if isinstance(value, list):
        return [_widen(item, draw) for item in value]
    if isinstance(value, str) and value.lstrip("-").replace(".", "", 1).isdigit() and draw(st.booleans()):
        return draw(st.sampled_from(edge_amounts))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and draw(st.booleans()):
        return draw(st.sampled_from(edge_integers))
    return value


def _head(node: FuzzNode) -> dict[str, Any]:
    return node.http.get(f"{node.url}/v1/audit/head", timeout=request_timeout_s).json()


# ------------------------------------------------------------------ the checks


def _check_error_body(label: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        pytest.fail(f"{label}: error {status} is not JSON: {content[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(error, dict), f"{label}: error body {body!r}"
    assert error_keys_required <= set(error) <= error_keys_allowed, f"{label}: error keys {sorted(error)}"
    assert error["code"] in error_codes, f"{label}: unknown error code {error['code']!r}"
    assert isinstance(error["message"], str) and error["message"], f"{label}: message {error['message']!r}"
    assert isinstance(error.get("account_id", ""), str), f"{label}: account_id {error['account_id']!r}"
    return error


def _check_nothing_changed(label: str, node: FuzzNode, before: dict[str, Any]) -> None:
    after = _head(node)
    if (after["seq"], after["hash"]) == (before["seq"], before["hash"]):
        return
    answer = node.http.get(
        f"{node.url}/v1/events", params={"from_seq": before["seq"] + 1, "to_seq": after["seq"]}, timeout=request_timeout_s
    )
    kinds = sorted({event["type"] for event in answer.json()["events"]})
    assert kinds == ["tcc_expired"], f"{label}: a rejected request was followed by events {kinds}"


def _check_status(case: schemathesis.Case, status: int, content: bytes, node: FuzzNode, before: dict[str, Any]) -> str:
    """No 5xx, the error shape, nothing changed by a rejection; returns the label for messages."""
    label = f"{case.method} {case.formatted_path} -> {status}\n  reproduce: {case.as_curl_command()}"
    if status >= 400:
        error = _check_error_body(label, status, content)
        if status == 503:
            at_seq = (case.query or {}).get("at_seq")
            assert error["code"] == ErrorCode.NOT_AVAILABLE and isinstance(at_seq, int) and at_seq > before["seq"], (
                f"{label}: a 5xx"
            )
        else:
            assert status < 500, f"{label}: a 5xx"
        if status < 500:
            _check_nothing_changed(label, node, before)
    return label


def _call_streaming(case: schemathesis.Case, node: FuzzNode) -> tuple[int, bytes, str]:
    """Status, the first line (a 200) or the whole body (an error), and the content type."""
    arguments = case.as_transport_kwargs(base_url=node.url)
    with requests.request(**arguments, stream=True, timeout=request_timeout_s) as response:
        content_type = response.headers.get("content-type", "")
        if response.status_code == 200:
            return 200, next(response.iter_lines(), b""), content_type
        return response.status_code, response.content, content_type


def _check_streaming(case: schemathesis.Case, node: FuzzNode, before: dict[str, Any]) -> None:
    status, content, content_type = _call_streaming(case, node)
    label = _check_status(case, status, content, node, before)
    assert str(status) in _document["paths"][case.path][case.method.lower()]["responses"], f"{label}: undocumented status"
    if status == 200:
        assert content_type.startswith("application/x-ndjson"), f"{label}: content type {content_type!r}"
        line = json.loads(content)
        assert isinstance(line, dict) and ("seq" in line or "heartbeat" in line), f"{label}: first line {content[:200]!r}"


@pytest.mark.parametrize(("path", "method", "mode"), cases)
def test_every_operation_keeps_the_contract(
    path: str, method: str, mode: GenerationMode, api_schema: schemathesis.BaseSchema, node: FuzzNode
) -> None:
    operation = api_schema[path][method]

    @settings(
        max_examples=examples_per_operation,
        deadline=None,
        derandomize=True,  # the same requests on every run: a failure here replays
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the curl line reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
        if isinstance(case.body, dict) and data.draw(st.integers(1, widen_chance_denominator)) == 1:
            case.body = _widen(case.body, data.draw)
        query = case.query
        for name in ("min_seq", "from_seq") if isinstance(query, dict) else ():
            # min_seq: see the module docstring; a feed's from_seq: so that its first line is an
            # event, sent at once, rather than a heartbeat 3 s later.
            if isinstance(query.get(name), int) and (name == "min_seq" or (path, method) in streaming_operations):
                query[name] = min(query[name], _head(node)["seq"])
        before = _head(node)
        try:
            if (path, method) in streaming_operations:
                _check_streaming(case, node, before)
                return
            response = case.call(base_url=node.url, timeout=request_timeout_s)
        except requests.RequestException as error:  # timeouts and connection errors
            pytest.fail(f"{case.method} {case.formatted_path}: no answer ({type(error).__name__})\n  {case.as_curl_command()}")
        _check_status(case, response.status_code, response.content, node, before)
        case.validate_response(response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance])

    fuzz()


# ------------------------------------------------------------------ fixed checks beside the fuzzing


def test_the_operations_fuzzed_are_all_the_node_serves(node: FuzzNode) -> None:
    # The test ids come from the document the code builds; the requests from the one served.
    served = node.http.get(f"{node.url}/openapi.json", timeout=request_timeout_s).json()
    assert served == _document


def test_every_answer_that_is_not_json_is_known_to_the_fuzzer() -> None:
    # A new endpoint that streams would hang the fuzzer: it must be listed in streaming_operations.
    not_json = {
        (path, method.upper())
        for path, item in _document["paths"].items()
        for method, operation in item.items()
        if "application/json" not in operation["responses"]["200"].get("content", {})
    }
    assert not_json == streaming_operations | text_operations


def test_a_read_ahead_of_the_node_is_not_available_with_retry_after(node: FuzzNode) -> None:
    seq = _head(node)["seq"]
    response = node.http.get(f"{node.url}/v1/accounts/any", params={"min_seq": seq + 1000}, timeout=request_timeout_s)
    assert response.status_code == 503 and response.headers.get("retry-after") == "1"
    assert response.json()["error"]["code"] == ErrorCode.NOT_AVAILABLE


bug_timeout_s = 3.0  # the 64-bit bug hung a request for 20 s; an idle node answers in milliseconds


def _post(node: FuzzNode, path: str, body: dict[str, Any]) -> httpx.Response | None:
    try:
        return node.http.post(f"{node.url}{path}", json=body, timeout=bug_timeout_s)
    except httpx.TimeoutException:
        return None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/v1/accounts",
            {"account_id": "wide-limit", "asset": "WIDE", "dedup_id": "wide-1", "lower_limit": "-" + str(2**127)},
            id="create-lower-limit",
        ),
        pytest.param(
            "/v1/accounts",
            {"account_id": "wide-eth", "asset": "WIDEETH", "scale": 18, "dedup_id": "wide-2", "lower_limit": "-170141183460469231732"},
            id="create-credit-beyond-the-bound-at-scale-18",
        ),
        pytest.param(
            "/v1/batch-operations",
            {
                "dedup_id": "wide-3",
                "legs": [{"account_id": "wide-version", "amount": "1", "asset": "WIDEVERSION"}],
                "preconditions": [{"account_id": "wide-version", "expected_version": 2**64}],
            },
            id="precondition-version",
        ),
    ],
)
def test_an_int_beyond_the_bound_is_rejected_and_the_node_keeps_taking_writes(
    node: FuzzNode, path: str, body: dict[str, Any]
) -> None:
    # The account the precondition case names (the others do not need it).
    _post(node, "/v1/accounts", {"account_id": "wide-version", "asset": "WIDEVERSION", "dedup_id": "wide-version"})
    answer = _post(node, path, body)
    try:
        assert answer is not None, f"no answer within {bug_timeout_s} s"
        assert 400 <= answer.status_code < 500, answer.text
        after = f"{body['dedup_id']}-after"
        follow_up = _post(node, "/v1/accounts", {"account_id": after, "asset": "WIDEAFTER", "dedup_id": after})
        assert follow_up is not None and follow_up.status_code == 200, "the node takes no more writes"
    finally:
        node.ensure_writable()  # a fresh node for the tests after this one if this one broke it


def test_a_balance_beyond_the_bound_is_rejected_and_the_node_restarts(node: FuzzNode) -> None:
    # 2**127 - 1 minor units at scale 2, the largest amount; two of them pass the bound.
    largest = str(2**127 - 1)[:-2] + "." + str(2**127 - 1)[-2:]
    _post(node, "/v1/accounts", {"account_id": "wide-sum", "asset": "WIDESUM", "dedup_id": "wide-sum-0"})
    try:
        for number in (1, 2, 3):
            leg = {"account_id": "wide-sum", "amount": largest, "asset": "WIDESUM"}
            answer = _post(node, "/v1/batch-operations", {"dedup_id": f"wide-sum-{number}", "legs": [leg]})
            assert answer is not None, f"deposit {number}: no answer within {bug_timeout_s} s"
            assert answer.status_code in (200, 409), answer.text
        node.server.kill()
        node.server.start()  # recovery replays the log, every deposit included
        follow_up = _post(
            node, "/v1/accounts", {"account_id": "wide-sum-after", "asset": "WIDEAFTER", "dedup_id": "wide-sum-after"}
        )
        assert follow_up is not None and follow_up.status_code == 200, "the node takes no more writes"
    finally:
        node.ensure_writable()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param("/v1/events", {"from_seq": 2**63}, id="events-from-seq"),
        pytest.param("/v1/events", {"to_seq": 2**64}, id="events-to-seq"),
        pytest.param("/v1/events", {"from_time": str(10**30)}, id="events-from-time"),
        pytest.param("/v1/accounts/wide-query/history", {"from_seq": 2**63}, id="history-from-seq"),
        pytest.param("/v1/accounts/wide-query/history", {"to_time": str(10**30)}, id="history-to-time"),
    ],
)
def test_a_seq_or_time_beyond_64_bits_in_a_query_is_a_clean_error(node: FuzzNode, path: str, params: dict[str, Any]) -> None:
    # The event store (SQLite) holds 64-bit integers: a bound beyond is malformed input, not a 500.
    _post(node, "/v1/accounts", {"account_id": "wide-query", "asset": "WIDEQUERY", "dedup_id": "wide-query"})
    response = node.http.get(f"{node.url}{path}", params=params, timeout=request_timeout_s)
    assert response.status_code in (200, 422), f"{response.status_code}: {response.text[:200]}"
    if response.status_code == 422:
        assert response.json()["error"]["code"] == ErrorCode.INVALID_REQUEST
