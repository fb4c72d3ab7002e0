"""Raw-byte fuzzing of every route of both servers: the node and the query server.

Where ``test_api_fuzz`` sends what the OpenAPI document describes (valid, or invalid by its
schema), this sends bytes no schema describes, over a raw socket: random bytes as a body, and
valid bodies mutated — truncated, bytes flipped, invalid UTF-8 spliced into a string, nested
thousands deep, a key repeated, a number of thousands of digits — with query strings mutated the
same way; and MessagePack bodies for ``POST /v1/commands`` (random, mutated, or a valid batch with
a key repeated, a key that is not a string, a value JSON has no equivalent of, deep nesting). Every
answer must be below 500 (a 503 only as ``NOT_AVAILABLE``), every 4xx in the
documented error shape, and the server must still answer ``/healthz`` afterwards and log no
traceback.

Bounds: ``examples_per_server`` requests per server, derandomized (a failure replays), a few
seconds each on the 2-core CI machine.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coffer.core.errors import ErrorCode
from coffer.server.openapi import openapi_document
from tests.fuzz.conftest import FuzzNode
from tests.service.query_process import QueryServer
from tests.service.raw_http import RawConnection, RawResponse

examples_per_server = 400
error_codes = frozenset(code.value for code in ErrorCode)
invalid_utf8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80")
huge_number = b"9" * 5000

_valid_bodies: dict[str, bytes] = {
    "/v1/accounts": b'{"account_id":"fuzz-raw-a","asset":"RAW","scale":2,"lower_limit":"-5","metadata":{"k":"v"},"dedup_id":"r1"}',
    "/v1/accounts/{account_id}/limits": b'{"lower_limit":"-1.50","upper_limit":null,"dedup_id":"r2"}',
    "/v1/accounts/{account_id}/lock": b'{"dedup_id":"r3"}',
    "/v1/accounts/{account_id}/unlock": b'{"dedup_id":"r4"}',
    "/v1/accounts/{account_id}/delete": b'{"dedup_id":"r5"}',
    "/v1/transfers": b'{"from_account_id":"fuzz-raw-a","to_account_id":"fuzz-raw-b","amount":"0.01","asset":"RAW",'
    b'"expected_from_balance":"1","dedup_id":"r6"}',
    "/v1/batch-operations": b'{"dedup_id":"r7","legs":[{"account_id":"fuzz-raw-a","amount":"-0.01","asset":"RAW"},'
    b'{"account_id":"fuzz-raw-b","amount":"0.01","asset":"RAW"}],"preconditions":[{"account_id":"fuzz-raw-a","min_balance":"0","expected_version":3}]}',
    "/v1/reservations": b'{"account_id":"fuzz-raw-a","reservation_id":"h","amount":"0.01","dedup_id":"r8"}',
    "/v1/releases": b'{"account_id":"fuzz-raw-a","reservation_id":"h","dedup_id":"r9"}',
    "/v1/tcc/try": b'{"txn_id":"t","legs":[{"account_id":"fuzz-raw-a","amount":"-0.01","asset":"RAW"}],"timeout_s":60,"dedup_id":"r10"}',
    "/v1/tcc/confirm": b'{"txn_id":"t","dedup_id":"r11"}',
    "/v1/tcc/cancel": b'{"txn_id":"t","dedup_id":"r12"}',
    "/v1/compensations": b'{"original_dedup_id":"r6","dedup_id":"r13"}',
    "/v1/commands": b'{"commands":[{"type":"transfer","from_account_id":"fuzz-raw-a","to_account_id":"fuzz-raw-b",'
    b'"amount":"0.01","asset":"RAW","dedup_id":"r14"},{"type":"lock_account","account_id":"fuzz-raw-b","dedup_id":"r15"}]}',
    "/admin/log-level": b'{"level":"warning"}',
    "/v1/hierarchy/nodes": b'{"node_id":"fuzz-n","parent_id":null,"children":["fuzz-raw-a","fuzz-raw-b"]}',
}
_valid_queries: dict[str, str] = {
    "/v1/accounts": "ids=fuzz-raw-a,fuzz-raw-b&at_seq=1&min_seq=1",
    "/v1/accounts/{account_id}": "min_seq=1",
    "/v1/accounts/{account_id}/history": "from_seq=1&to_seq=100&from_time=2024-01-01T00:00:00Z&to_time=1999999999.5&limit=10",
    "/v1/events": "from_seq=1&to_seq=100&from_time=0&to_time=2100-01-01T00:00:00%2B02:00&limit=10",
    "/v1/events/stream": "from_seq=1",
    "/v1/hierarchy/nodes/{node_id}/balance": "root_only=true&at_seq=1",
}
_query_routes = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{account_id}/history"),
    ("GET", "/v1/events"),
    ("GET", "/v1/audit/head"),
    ("POST", "/v1/hierarchy/nodes"),
    ("GET", "/v1/hierarchy/nodes/{node_id}"),
    ("GET", "/v1/hierarchy/nodes/{node_id}/balance"),
]
_node_routes = [
    (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
] + [("GET", "/openapi.json"), ("DELETE", "/v1/transfers"), ("GET", "/v1/nowhere")]


# ------------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with one to three mutations applied."""
    data = valid
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "utf8", "nest", "repeat", "number", "insert"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip" and data:
            position = min(at, len(data) - 1)
            data = data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
        elif kind == "utf8":
            strings = [match.start() + 1 for match in re.finditer(rb'"', data)] or [at]
            position = draw(st.sampled_from(strings))
            data = data[:position] + draw(st.sampled_from(invalid_utf8)) + data[position:]
        elif kind == "nest":
            depth = draw(st.sampled_from([33, 1000, 20_000]))
            opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
            value = opening * depth + b"1" + closing * depth
            data = data[:-1] + b',"deep":' + value + b"}" if data.endswith(b"}") else value
        elif kind == "repeat":
            pairs = list(re.finditer(rb'"([a-z_]+)":("[^"]*"|[-0-9]+|null)', data))
            if pairs:
                pair = draw(st.sampled_from(pairs))
                key, value = pair.group(1), draw(st.sampled_from([pair.group(2), b'"500"']))
                if draw(st.booleans()):
                    key = b"\\u%04x" % key[0] + key[1:]  # the same key, its first letter escaped
                data = data[: pair.end()] + b',"' + key + b'":' + value + data[pair.end() :]
        elif kind == "number":
            digits = list(re.finditer(rb"[0-9]+", data))
            if digits:
                span = draw(st.sampled_from(digits)).span()
                data = data[: span[0]] + huge_number + data[span[1] :]
        else:
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


def _percent(data: bytes) -> str:
    return quote(data, safe="=&,:")


@st.composite
def requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> tuple[str, bytes, bytes | None]:
    """A method, a request target (bytes) and a body or None."""
    method, path = draw(st.sampled_from(routes))
    identifier = draw(st.sampled_from([b"fuzz-raw-a", b"fuzz-n", b"..", b"%2E%2E", b"a%FFb", b"%C3%28", huge_number, b"x" * 200]))
    target = path.replace("{account_id}", "\0").replace("{node_id}", "\0").encode().replace(b"\0", identifier)
    query = _valid_queries.get(path, "").encode()
    choice = draw(st.sampled_from(["keep", "mutate", "random", "unknown"]))
    if choice == "mutate" and query:
        query = _percent(draw(mutated(query))).encode()
    elif choice == "random":
        query = _percent(draw(st.binary(max_size=40))).encode()
    elif choice == "unknown":
        query = query + b"&cursor=x" if query else b"at_time=1"
    if query:
        target += b"?" + query
    if method == "GET":
        return method, target, None
    valid = _valid_bodies.get(path, b"{}")
    body = draw(st.one_of(st.binary(max_size=300), mutated(valid), st.just(valid)))
    return method, target, body


# ------------------------------------------------------------------------------- the checks


class Sender:
    """One keep-alive raw connection, reopened when the server closes it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: RawConnection | None = None

    def send(self, method: str, target: bytes, body: bytes | None) -> RawResponse:
        if self.connection is None or self.connection.closed_by_server():
            self.reopen()
        assert self.connection is not None
        answer = self.connection.request(method, target, body)
        if answer.headers.get("transfer-encoding") == "chunked" or answer.headers.get("connection") == "close":
            self.reopen()  # a feed never ends: read its head only
        return answer

    def reopen(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = RawConnection(self.url)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _check(label: str, answer: RawResponse) -> None:
    assert answer.status < 500 or answer.status == 503, f"{label}: {answer.status} {answer.body[:300]!r}"
    if answer.status < 400:
        return
    assert answer.headers.get("content-type", "").startswith("application/json"), f"{label}: {answer.headers}"
    body = json.loads(answer.body)
    error = body["error"]
    assert set(body) == {"error"} and {"code", "message"} <= set(error) <= {"code", "message", "account_id"}, f"{label}: {body}"
    assert error["code"] in error_codes, f"{label}: {error}"
    if answer.status == 503:
        assert error["code"] == ErrorCode.NOT_AVAILABLE and answer.headers.get("retry-after"), f"{label}: {answer.headers}"
    if answer.status == 405:
        assert answer.headers.get("allow"), f"{label}: 405 without Allow"


def _fuzz(url: str, routes: list[tuple[str, str]], log_path: Path) -> None:
    sender = Sender(url)

    @settings(
        max_examples=examples_per_server,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(routes))
    def fuzz(request: tuple[str, bytes, bytes | None]) -> None:
        method, target, body = request
        label = f"{method} {target[:200]!r} body={None if body is None else body[:200]!r}"
        _check(label, sender.send(method, target, body))

    try:
        fuzz()
        assert sender.send("GET", b"/healthz", None).status == 200
    finally:
        sender.close()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


@pytest.fixture(scope="module")
def query_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryServer]:
    server = QueryServer(Path(tmp_path_factory.mktemp("query-fuzz")) / "store.sqlite3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_raw_bytes_on_every_route_of_the_node(node: FuzzNode) -> None:
    for account_id in ("fuzz-raw-a", "fuzz-raw-b"):
        body = {"account_id": account_id, "asset": "RAW", "dedup_id": f"create-{account_id}"}
        node.http.post(f"{node.url}/v1/accounts", json=body)
    node.http.post(
        f"{node.url}/v1/batch-operations",
        json={"dedup_id": "fund-raw", "legs": [{"account_id": "fuzz-raw-a", "amount": "100", "asset": "RAW"}]},
    )
    _fuzz(node.url, _node_routes, node.server.log_path)


_valid_msgpack_commands = msgspec.json.decode(_valid_bodies["/v1/commands"])["commands"]
_msgpack_oddities: list[tuple[object, bytes]] = [
    ("amount", msgspec.msgpack.encode("500")),  # the key again: a repeat
    (1, msgspec.msgpack.encode("x")),
    (b"amount", msgspec.msgpack.encode("1")),
    ("metadata", b"\x81\xa1k\xc7\x01\x05\x00"),  # an extension value
    ("metadata", b"\x81\xa1k\xd6\xff\x00\x00\x00\x01"),  # a timestamp
    ("metadata", b"\x81\xa1k\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"),  # NaN
    ("metadata", b"\x81\xa1k\xc4\x01x"),  # binary
    ("metadata", b"\x81\xa1k" + b"\x91" * 40 + b"\x01"),
    ("metadata", b"\x81\xa1k" + b"\x91" * 20_000 + b"\x01"),
    ("dedup_id", b"\xd9\x02r9"),  # a str8 where a fixstr would do: not the shortest form
]


@st.composite
def msgpack_bodies(draw: st.DrawFn) -> bytes:
    """A MessagePack body for POST /v1/commands: random, mutated, or a valid batch with an oddity."""
    choice = draw(st.sampled_from(["random", "mutate", "oddity"]))
    if choice == "random":
        return draw(st.binary(max_size=300))
    items = []
    for command in _valid_msgpack_commands:
        pairs = [msgspec.msgpack.encode(key) + msgspec.msgpack.encode(value) for key, value in command.items()]
        if choice == "oddity" and draw(st.booleans()):
            key, value = draw(st.sampled_from(_msgpack_oddities))
            pairs.append(msgspec.msgpack.encode(key) + value)
        items.append(bytes([0x80 | len(pairs)]) + b"".join(pairs))
    data = b"\x81\xa8commands" + bytes([0x90 | len(items)]) + b"".join(items)
    if choice == "mutate":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
            if kind == "truncate":
                data = data[:at]
            elif kind == "flip" and data:
                position = min(at, len(data) - 1)
                data = data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
            else:
                data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


def test_raw_msgpack_bodies_on_commands(node: FuzzNode) -> None:
    sender = Sender(node.url)
    headers = {"content-type": "application/msgpack"}

    @settings(
        max_examples=examples_per_server,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(body=msgpack_bodies())
    def fuzz(body: bytes) -> None:
        if sender.connection is None or sender.connection.closed_by_server():
            sender.reopen()
        assert sender.connection is not None
        answer = sender.connection.request("POST", b"/v1/commands", body, headers)
        label = f"msgpack body={body[:200]!r}"
        assert answer.status < 500 or answer.status == 503, f"{label}: {answer.status} {answer.body[:300]!r}"
        assert answer.headers.get("content-type") == "application/msgpack", f"{label}: {answer.headers}"
        decoded = msgspec.msgpack.decode(answer.body)
        for result in [decoded] if answer.status >= 400 else decoded["results"]:
            if result.get("status", answer.status) >= 400:
                error = result["error"]
                assert {"code", "message"} <= set(error) <= {"code", "message", "account_id"}, f"{label}: {result}"
                assert error["code"] in error_codes, f"{label}: {error}"

    try:
        fuzz()
        assert sender.send("GET", b"/healthz", None).status == 200
    finally:
        sender.close()
    log = node.server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_raw_bytes_on_every_route_of_the_query_server(query_server: QueryServer) -> None:
    _fuzz(query_server.url, _query_routes, query_server.log_path)
