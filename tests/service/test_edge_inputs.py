"""Malformed input at the edge of both servers: always a 4xx in the documented shape, never a 500.

Each case was a 500 (or a silent misreading) once: invalid UTF-8 inside a JSON string, deep
nesting, query integers of thousands of digits, times that overflow, repeated JSON keys, unknown
query parameters, the account ids ``.`` and ``..``. Every request goes over one raw keep-alive
connection, and the same connection must answer ``/healthz`` afterwards: a 422 keeps it.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coffer.http.inputs import refuse_duplicate_keys
from tests.service.query_process import QueryServer
from tests.service.raw_http import RawConnection
from tests.service.server_process import CofferServer

huge_digits = "9" * 5000
deep = 5000  # far past any parser's recursion limit


@pytest.fixture(scope="module")
def query_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryServer]:
    server = QueryServer(Path(tmp_path_factory.mktemp("query")) / "store.sqlite3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def funded(_shared_server: CofferServer) -> tuple[str, str]:
    """Two USD accounts, the first holding 1000.00."""
    source, target = f"edge-{uuid.uuid4().hex[:8]}", f"edge-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=_shared_server.url) as client:
        for account_id in (source, target):
            created = client.post("/v1/accounts", json={"account_id": account_id, "asset": "USD", "dedup_id": f"c-{account_id}"})
            assert created.status_code == 200, created.text
        leg = {"account_id": source, "amount": "1000", "asset": "USD"}
        funded = client.post("/v1/batch-operations", json={"dedup_id": f"f-{source}", "legs": [leg]})
        assert funded.status_code == 200, funded.text
    return source, target


def refused(url: str, method: str, target: str | bytes, body: bytes | None = None, status: int = 422) -> dict[str, object]:
    """Send one request; it must get ``status`` in the error shape and keep the connection."""
    with RawConnection(url) as connection:
        answer = connection.request(method, target, body)
        assert answer.status == status, (answer.status, answer.body[:300])
        error = answer.json()["error"]
        assert set(error) <= {"code", "message", "account_id"} and error["message"], error
        if status == 422:
            assert error["code"] == "INVALID_REQUEST", error
        assert connection.request("GET", "/healthz").status == 200, "the connection was not kept"
    return error


def transfer_body(source: str, target: str, amount: bytes = b'"1.00"', dedup_id: str | None = None) -> bytes:
    dedup = (dedup_id or uuid.uuid4().hex).encode()
    return (
        b'{"from_account_id":"' + source.encode() + b'","to_account_id":"' + target.encode() + b'","amount":' + amount
        + b',"asset":"USD","dedup_id":"' + dedup + b'"}'
    )


def available(server: CofferServer, account_id: str) -> str:
    return str(httpx.get(f"{server.url}/v1/accounts/{account_id}").json()["available"])


# ------------------------------------------------------------------------- invalid UTF-8


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/v1/transfers", None, id="transfer"),
        pytest.param("POST", "/v1/accounts", b'{"account_id":"\xff","asset":"USD","dedup_id":"u1"}', id="create"),
        pytest.param("POST", "/v1/accounts/{source}/lock", b'{"dedup_id":"\xc3\x28"}', id="lock"),
        pytest.param("POST", "/v1/commands", b'{"commands":[{"type":"lock_account","account_id":"a","dedup_id":"\xed\xa0\x80"}]}', id="commands"),
        pytest.param("PUT", "/admin/log-level", b'{"level":"\xff\xfe"}', id="log-level"),
        pytest.param("POST", "/v1/transfers", b'{"\xff":1}', id="in-a-key"),
    ],
)
def test_invalid_utf8_in_a_json_string_is_422(
    server: CofferServer, funded: tuple[str, str], method: str, path: str, body: bytes | None
) -> None:
    source, target = funded
    body = body if body is not None else transfer_body(source, target, amount=b'"1\xff.00"')
    refused(server.url, method, path.format(source=source), body)


# ------------------------------------------------------------------------- deep nesting


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/commands", b'{"commands":[{"type":"transfer","metadata":' + b"[" * deep + b"]" * deep + b"}]}", id="commands-item"),
        pytest.param("/v1/commands", b'{"commands":' + b"[" * deep + b"]" * deep + b"}", id="commands-list"),
        pytest.param("/v1/accounts/{source}/lock", b'{"dedup_id":' + b"[" * deep + b"]" * deep + b"}", id="lock"),
        pytest.param("/v1/accounts/{source}/limits", b'{"x":' + b'{"x":' * deep + b"1" + b"}" * deep + b"}", id="limits"),
        pytest.param("/v1/commands", b'{"commands":[{"type":"transfer","metadata":' + b"[" * 40 + b"]" * 40 + b"}]}", id="past-the-bound"),
    ],
)
def test_deep_nesting_is_422(server: CofferServer, funded: tuple[str, str], path: str, body: bytes) -> None:
    refused(server.url, "POST", path.format(source=funded[0]), body)


@pytest.mark.parametrize("path", ["/v1/accounts/{source}/unlock", "/v1/accounts/{source}/limits", "/v1/transfers", "/v1/commands"])
def test_an_integer_beyond_64_bits_anywhere_in_a_body_is_422(server: CofferServer, funded: tuple[str, str], path: str) -> None:
    # Account-path routes read the body without a schema first: its integers must be held there too.
    refused(server.url, "POST", path.format(source=funded[0]), b'{"dedup_id":"big","extra":[' + huge_digits.encode() + b"]}")


# ------------------------------------------------------------------------- duplicate keys


def test_a_repeated_amount_is_refused_and_moves_nothing(server: CofferServer, funded: tuple[str, str]) -> None:
    source, target = funded
    before = available(server, source)
    body = transfer_body(source, target, amount=b'"0.01","amount":"500"')
    refused(server.url, "POST", "/v1/transfers", body)
    assert available(server, source) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/transfers", b'"dedup_id":"d1","dedup_id":"d2"', id="dedup-id"),
        pytest.param("/v1/transfers", b'"amount" : "0.01" ,\n "amount":"2"', id="with-whitespace"),
        pytest.param("/v1/transfers", b'"amount":"0.01","am\\u006funt":"2"', id="escaped-key"),
        pytest.param("/v1/transfers", b'"metadata":{"k":"1","k":"2"}', id="metadata"),
    ],
)
def test_a_repeated_key_anywhere_in_a_transfer_is_422(server: CofferServer, funded: tuple[str, str], path: str, body: bytes) -> None:
    source, target = funded
    fields = body + b',"from_account_id":"' + source.encode() + b'","to_account_id":"' + target.encode() + b'","asset":"USD"'
    if b"dedup_id" not in body:
        fields += b',"dedup_id":"' + uuid.uuid4().hex.encode() + b'"'
    if b'"amount"' not in body:
        fields += b',"amount":"1"'
    refused(server.url, "POST", path, b"{" + fields + b"}")


def test_a_repeated_key_in_commands_legs_or_the_envelope_is_422(server: CofferServer, funded: tuple[str, str]) -> None:
    source, target = funded
    leg = b'{"account_id":"' + source.encode() + b'","amount":"1","asset":"USD"}'
    repeated_type = b'{"commands":[{"type":"lock_account","type":"transfer","account_id":"' + source.encode() + b'","dedup_id":"t1"}]}'
    refused(server.url, "POST", "/v1/commands", repeated_type)
    refused(server.url, "POST", "/v1/commands", b'{"commands":[],"commands":[{"type":"tcc_confirm","txn_id":"x","dedup_id":"y"}]}')
    repeated_leg_amount = b'{"dedup_id":"b1","legs":[' + leg[:-1] + b',"amount":"900"}]}'
    refused(server.url, "POST", "/v1/batch-operations", repeated_leg_amount)
    refused(server.url, "POST", f"/v1/accounts/{source}/limits", b'{"dedup_id":"l1","lower_limit":"0","lower_limit":"-900"}')
    # The same keys in different objects are fine: two legs, each with its own account_id.
    two_legs = b'{"dedup_id":"' + uuid.uuid4().hex.encode() + b'","legs":[' + leg + b"," + leg.replace(source.encode(), target.encode()) + b"]}"
    assert httpx.post(f"{server.url}/v1/batch-operations", content=two_legs).status_code == 200


@pytest.mark.parametrize(
    ("text", "repeats"),
    [
        (b'{"a":1,"b":2}', False),
        (b'{"a":1,"a":2}', True),
        (b'{"a":{"b":1},"c":{"b":1}}', False),
        (b'[{"a":1},{"a":1}]', False),
        (b'[{"a":1},{"a":1,"b":{"c":[{"d":1,"d":1}]}}]', True),
        (b'{"a:":"b:c","x":[1,{"y":":"}]}', False),
        (b'{"a":"x\\"y","a\\"":1}', False),
        (b'{"a\\"":"\\"","a\\u0022":2}', True),
        (b'{"am\\u006funt":"1","amount":"2"}', True),
        (b'{"\\u00e9":1,"\xc3\xa9":2}', True),
        (b'{"a" :1, "a"\n:2}', True),
        (b'{}', False),
        (b'"a"', False),
    ],
)
def test_the_duplicate_check_is_exact(text: bytes, repeats: bool) -> None:
    from coffer.http.inputs import InputError

    if repeats:
        with pytest.raises(InputError):
            refuse_duplicate_keys(text)
    else:
        refuse_duplicate_keys(text)


# ------------------------------------------------------------------------- query parameters


@pytest.mark.parametrize(
    "target",
    [
        f"/v1/events?limit={huge_digits}",
        f"/v1/events?from_seq={huge_digits}",
        f"/v1/events?to_seq={huge_digits}",
        f"/v1/accounts/{{source}}?min_seq={huge_digits}",
        f"/v1/accounts?ids={{source}}&at_seq={huge_digits}",
        f"/v1/accounts?ids={{source}}&min_seq={huge_digits}",
        f"/v1/accounts/{{source}}/history?to_seq={huge_digits}",
        f"/v1/events/stream?from_seq={huge_digits}",
        "/v1/events?from_time=" + "9" * 400 + ".5",
        "/v1/events?to_time=1e400",
        f"/v1/events?from_time={huge_digits}",
        "/v1/accounts/{source}/history?from_time=0001-01-01T00:00:00%2B01:00",
        "/v1/events?limit=%C2%B2",
    ],
)
def test_query_numbers_out_of_range_are_422(server: CofferServer, funded: tuple[str, str], target: str) -> None:
    refused(server.url, "GET", target.format(source=funded[0]))


@pytest.mark.parametrize(
    "target",
    [
        "/v1/events?cursors=abc",
        "/v1/events?form_seq=1",
        "/v1/events?limit=1&limit=2",
        "/v1/accounts/{source}?at_times=2024-01-01T00:00:00Z",
        "/v1/accounts/{source}/history?cursr=x",
        "/v1/accounts?ids={source}&at_tim=1",
        "/v1/events/stream?cursor=1",
        "/v1/audit/head?shard=x",
        "/metrics?x=1",
        "/healthz?x=1",
        "/readyz?x=1",
        "/openapi.json?x=1",
    ],
)
def test_unknown_or_repeated_query_parameters_are_422_by_name(server: CofferServer, funded: tuple[str, str], target: str) -> None:
    error = refused(server.url, "GET", target.format(source=funded[0]))
    name = target.split("?")[1].split("&")[-1].split("=")[0]
    assert repr(name) in str(error["message"]), error


# ------------------------------------------------------------------------- 405 and reserved ids


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/transfers", {"POST"}),
        ("DELETE", "/v1/commands", {"POST"}),
        ("DELETE", "/v1/accounts", {"GET", "HEAD", "POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("PUT", "/v1/accounts/x", {"GET", "HEAD"}),
    ],
)
def test_405_names_the_allowed_methods(server: CofferServer, method: str, path: str, allowed: set[str]) -> None:
    with RawConnection(server.url) as connection:
        answer = connection.request(method, path, b"{}" if method != "GET" else None)
        assert answer.status == 405
        assert set(answer.headers["allow"].replace(" ", "").split(",")) == allowed
        assert answer.json()["error"]["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/v1/accounts/%2E%2E", None),
        ("GET", "/v1/accounts/%2E", None),
        ("GET", "/v1/accounts/%2e%2e/history", None),
        ("GET", "/v1/accounts?ids=..", None),
        ("POST", "/v1/accounts/%2E%2E/lock", b'{"dedup_id":"dots-1"}'),
        ("POST", "/v1/accounts", b'{"account_id":"..","asset":"USD","dedup_id":"dots-2"}'),
        ("POST", "/v1/accounts", b'{"account_id":".","asset":"USD","dedup_id":"dots-3"}'),
        ("POST", "/v1/transfers", b'{"from_account_id":"{source}","to_account_id":"..","amount":"1","asset":"USD","dedup_id":"dots-4"}'),
        ("POST", "/v1/batch-operations", b'{"dedup_id":"dots-5","legs":[{"account_id":".","amount":"1","asset":"USD"}]}'),
        ("POST", "/v1/commands", b'{"commands":[{"type":"create_account","account_id":"..","asset":"USD","dedup_id":"dots-6"}]}'),
    ],
)
def test_account_ids_dot_and_dot_dot_are_refused(
    server: CofferServer, funded: tuple[str, str], method: str, target: str, body: bytes | None
) -> None:
    body = None if body is None else body.replace(b"{source}", funded[0].encode())
    if target == "/v1/commands":
        with RawConnection(server.url) as connection:
            (result,) = connection.request(method, target, body).json()["results"]
            assert (result["status"], result["error"]["code"]) == (422, "INVALID_REQUEST")
        return
    refused(server.url, method, target, body)


# ------------------------------------------------------------------------- the query server


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", f"/v1/events?limit={huge_digits}", None),
        ("GET", "/v1/events?limit=99999999999999999999", None),  # 20 digits: past the signed 64-bit bound
        ("GET", "/v1/events?from_seq=9223372036854775808", None),  # 2**63: one past it
        ("GET", "/v1/accounts/a/history?to_seq=99999999999999999999", None),
        ("GET", "/v1/hierarchy/nodes/n/balance?at_seq=9223372036854775808", None),
        ("GET", f"/v1/events?from_seq={huge_digits}", None),
        ("GET", f"/v1/events?to_seq={huge_digits}", None),
        ("GET", f"/v1/events?min_seq={huge_digits}", None),
        ("GET", "/v1/events?from_time=" + "9" * 400 + ".5", None),
        ("GET", "/v1/events?to_time=99999999999999999999", None),
        ("GET", f"/v1/accounts?ids=a&at_seq={huge_digits}", None),
        ("GET", "/v1/accounts?ids=a&at_seq=9223372036854775808", None),
        ("GET", f"/v1/accounts/a/history?from_seq={huge_digits}", None),
        ("GET", f"/v1/hierarchy/nodes/n/balance?at_seq={huge_digits}", None),
        ("GET", "/v1/events?cursr=x", None),
        ("GET", "/v1/accounts/a/history?at_tim=1", None),
        ("GET", "/v1/hierarchy/nodes/n?x=1", None),
        ("GET", "/v1/hierarchy/nodes/n/balance?root_only=true&root_only=false", None),
        ("GET", "/v1/audit/head?x=1", None),
        ("GET", "/healthz?x=1", None),
        ("GET", "/v1/accounts/%2E%2E/history", None),
        ("GET", "/v1/hierarchy/nodes/%2E%2E", None),
        ("POST", "/v1/hierarchy/nodes", b'{"node_id":"\xff","children":[]}'),
        ("POST", "/v1/hierarchy/nodes", b'{"node_id":"n","node_id":"m","children":[]}'),
        ("POST", "/v1/hierarchy/nodes", b'{"node_id":"n","children":' + b"[" * deep + b"]" * deep + b"}"),
        ("POST", "/v1/hierarchy/nodes", b'{"node_id":"..","children":[]}'),
        ("POST", "/v1/hierarchy/nodes", b'{"node_id":"n","children":["."]}'),
    ],
)
def test_the_query_server_refuses_the_same_input(query_server: QueryServer, method: str, target: str, body: bytes | None) -> None:
    refused(query_server.url, method, target, body)


def test_the_query_server_takes_integers_up_to_the_signed_64_bit_bound(query_server: QueryServer) -> None:
    with RawConnection(query_server.url) as connection:
        answer = connection.request("GET", "/v1/events?from_seq=9223372036854775807", None)
        assert answer.status == 200, answer.json()
        assert answer.json()["events"] == []
    error = refused(query_server.url, "GET", "/v1/events?from_seq=9223372036854775808")
    assert "9223372036854775807" in str(error["message"]), error


def test_the_query_server_405_names_the_allowed_methods(query_server: QueryServer) -> None:
    with RawConnection(query_server.url) as connection:
        answer = connection.request("DELETE", "/v1/hierarchy/nodes", b"{}")
        assert answer.status == 405 and answer.headers["allow"] == "POST"


def test_each_node_route_takes_exactly_the_query_parameters_its_openapi_operation_lists() -> None:
    from coffer.server.app import Api
    from coffer.server.openapi import openapi_document

    paths = openapi_document()["paths"]
    from coffer.server.operator_api import NodeTools

    api = Api.__new__(Api)  # routes() reads no state: no node is needed
    api.tools = NodeTools.__new__(NodeTools)
    api.tools.api = api
    from coffer.flows.http import FlowRoutes
    from coffer.notify.http import WebhookRoutes

    api.flows = FlowRoutes.__new__(FlowRoutes)
    api.flows.api = api
    api.webhooks = WebhookRoutes.__new__(WebhookRoutes)
    api.webhooks._route = api.route
    for route in api.routes():
        for method in route.methods - {"HEAD"}:
            operation = paths[route.path][method.lower()]
            documented = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "query"}
            assert route.query_parameters == documented, (method, route.path)
