"""``POST /v1/commands`` in MessagePack: the same commands and answers as JSON, the same strictness.

A MessagePack body must read exactly as its JSON twin: the same fields, amounts as decimal
strings, and nothing JSON could not say (a key that is not a string, a repeated key, binary or
extension values, NaN, nesting past the bound) — each of those is a 422 in the documented error
shape, answered in MessagePack, never a 500.
"""

import json
import math
import struct
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from coffer import Client
from coffer.http import inputs
from tests.service.raw_http import RawConnection
from tests.service.server_process import CofferServer

msgpack = "application/msgpack"
encode = msgspec.msgpack.encode


def pack_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A map of the given pairs, as written, repeats included (no encoder writes one)."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(encode(key) + encode(value) for key, value in pairs)


def str8(text: str) -> bytes:
    """``text`` as a str8 (legal, but not the shortest form for fewer than 32 bytes)."""
    data = text.encode()
    return bytes([0xD9, len(data)]) + data


def commands_body(*items: bytes) -> bytes:
    return b"\x81" + encode("commands") + bytes([0x90 | len(items)]) + b"".join(items)


@pytest.fixture(scope="module")
def accounts(_shared_server: CofferServer) -> tuple[str, str]:
    source, target = f"mp-{uuid.uuid4().hex[:8]}", f"mp-{uuid.uuid4().hex[:8]}"
    with Client(_shared_server.url) as client:
        for account_id in (source, target):
            client.create_account(account_id, "USD")
        client.commands([{"type": "batch_operation", "legs": [{"account_id": source, "amount": "1000", "asset": "USD"}]}])
    return source, target


def transfer(source: str, target: str, amount: str = "1.25") -> dict[str, Any]:
    return {"type": "transfer", "from_account_id": source, "to_account_id": target, "amount": amount, "asset": "USD"} | {
        "dedup_id": f"mp-{uuid.uuid4().hex}"
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/commands", content=body, headers=headers, timeout=10)


def test_the_same_batch_answers_the_same_in_both_encodings(server: CofferServer, accounts: tuple[str, str]) -> None:
    source, target = accounts
    items = [transfer(source, target), transfer(source, target, "99999999"), {"type": "transfer", "dedup_id": "x"}]
    answer = post(server.url, encode({"commands": items}), {"content-type": msgpack})
    assert answer.status_code == 200 and answer.headers["content-type"] == msgpack
    results = msgspec.msgpack.decode(answer.content)["results"]
    assert [result["status"] for result in results] == [200, 409, 422]
    assert results[0]["accounts"][0]["available"] in ("998.75", "1.25")  # amounts stay decimal strings

    # The same commands again in JSON: the retries answer the very same bodies.
    again = post(server.url, json.dumps({"commands": items}).encode(), {"content-type": "application/json"})
    assert again.headers["content-type"] == "application/json" and again.json()["results"] == results
    # JSON in, MessagePack out on request.
    asked = post(server.url, json.dumps({"commands": items}).encode(), {"accept": f"{msgpack}, application/json;q=0.5"})
    assert asked.headers["content-type"] == msgpack and msgspec.msgpack.decode(asked.content)["results"] == results


malformed_bodies = {
    "not msgpack": b"\xc1",
    "truncated": encode({"commands": [{"type": "lock_account", "account_id": "a", "dedup_id": "d"}]})[:-3],
    "trailing bytes": encode({"commands": []}) + b"\x00",
    "json": b'{"commands": []}',
    "repeated key in a command": commands_body(pack_map([("type", "lock_account"), ("account_id", "a"), ("account_id", "b"), ("dedup_id", "d")])),
    "repeated key, spelled twice": commands_body(
        bytes([0x84]) + encode("type") + encode("lock_account") + encode("account_id") + encode("a")
        + str8("account_id") + encode("b") + encode("dedup_id") + encode("d")
    ),
    "repeated envelope key": bytes([0x82]) + encode("commands") + encode([]) + encode("commands") + encode([{"type": "x"}]),
    "integer key in metadata": encode({"commands": [{"type": "create_account", "account_id": "a", "asset": "USD", "dedup_id": "d", "metadata": {1: "x"}}]}),
    "binary key in a command": commands_body(pack_map([(b"type", "lock_account")])),
    "binary amount": encode({"commands": [{"type": "transfer", "from_account_id": "a", "to_account_id": "b", "amount": b"1", "asset": "USD", "dedup_id": "d"}]}),
    "number amount": encode({"commands": [{"type": "transfer", "from_account_id": "a", "to_account_id": "b", "amount": 1, "asset": "USD", "dedup_id": "d"}]}),
    "extension in metadata": encode({"commands": [{"type": "create_account", "account_id": "a", "asset": "USD", "dedup_id": "d", "metadata": {"k": msgspec.msgpack.Ext(5, b"x")}}]}),
    "timestamp in metadata": commands_body(
        bytes([0x85])
        + b"".join(encode(key) + encode(value) for key, value in [("type", "create_account"), ("account_id", "a"), ("asset", "USD"), ("dedup_id", "d")])
        + encode("metadata") + b"\x81" + encode("k") + b"\xd6\xff" + struct.pack(">I", 1)
    ),
    # A timestamp extension msgspec cannot read raises its ValidationError, not a DecodeError.
    "malformed timestamp in metadata": commands_body(
        bytes([0x85])
        + b"".join(encode(key) + encode(value) for key, value in [("type", "create_account"), ("account_id", "a"), ("asset", "USD"), ("dedup_id", "d")])
        + encode("metadata") + b"\x81" + encode("k") + b"\xc7\x03\xff\x00\x00\x00"
    ),
    "malformed timestamp as the body": b"\xc7\x03\xff\x00\x00\x00",
    "NaN in metadata": encode({"commands": [{"type": "create_account", "account_id": "a", "asset": "USD", "dedup_id": "d", "metadata": {"k": math.nan}}]}),
    "nested too deep": encode({"commands": [{"type": "create_account", "account_id": "a", "asset": "USD", "dedup_id": "d", "metadata": {"k": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}]}),
    "nested far too deep": b"\x81\xa8commands" + b"\x91" * 20_000 + b"\x01",
    "commands not a list": encode({"commands": {"type": "x"}}),
    "unknown envelope field": encode({"commands": [], "extra": 1}),
    "no commands": encode({"commands": []}),
}
per_command = {"number amount"}  # the body is sound; its one command is the 422, as in JSON


@pytest.mark.parametrize("name", sorted(malformed_bodies))
def test_every_malformed_body_is_a_422_in_msgpack(server: CofferServer, name: str) -> None:
    body = malformed_bodies[name]
    with RawConnection(server.url) as connection:
        answer = connection.request("POST", "/v1/commands", body, {"content-type": msgpack})
        assert answer.headers["content-type"] == msgpack, (name, answer.status, answer.body[:300])
        decoded = msgspec.msgpack.decode(answer.body)
        if name in per_command:
            assert answer.status == 200, (name, decoded)
            (decoded,) = decoded["results"]
            assert decoded.pop("status") == 422, (name, decoded)
        else:
            assert answer.status == 422, (name, decoded)
        assert set(decoded) == {"error"} and decoded["error"]["code"].startswith("INVALID_"), (name, decoded)
        assert connection.request("GET", "/healthz").status == 200


def test_decode_msgpack_unit_cases() -> None:
    assert inputs.decode_msgpack(encode({"a": [1, "2", None, True, 1.5]})) == {"a": [1, "2", None, True, 1.5]}
    # Not the shortest form, but nothing repeated: accepted by the exact walk.
    assert inputs.decode_msgpack(b"\x82" + str8("a") + b"\x01" + str8("b") + b"\x02") == {"a": 1, "b": 2}
    for body, message in [
        (b"\x82" + str8("a") + b"\x01" + encode("a") + b"\x02", "repeats a key"),
        (b"\x81\x01\x01", "not a string"),
        (encode({"a": b"x"}), "no equivalent"),
        (encode({"a": math.inf}), "not finite"),
        (b"\x91" * 40 + b"\x01", "nested deeper"),
        (b"\xc1", "not valid MessagePack"),
        (b"\xc7\x03\xff\x00\x00\x00", "not valid"),
        (b"\xc7\x0c\xff" + b"\xff" * 12, "not valid"),
        (b"\x81\xa1a\xa2\xff\xfe", "not valid MessagePack"),
    ]:
        with pytest.raises(inputs.InputError, match=message):
            inputs.decode_msgpack(body)
    assert inputs.is_msgpack("application/msgpack; charset=binary") and not inputs.is_msgpack("application/json")
    assert inputs.answers_msgpack({"accept": "application/json, application/msgpack"})
    assert not inputs.answers_msgpack({"content-type": "application/json"})


def test_the_client_sends_batches_in_msgpack(server: CofferServer, accounts: tuple[str, str]) -> None:
    source, target = accounts
    sent: list[str] = []

    def note(request: httpx.Request) -> None:
        sent.append(request.headers.get("content-type", ""))

    with Client(server.url) as client:
        client._http.event_hooks["request"].append(note)
        outcomes = client.commands([transfer(source, target), {"type": "lock_account", "dedup_id": "x"}])
    assert sent == [msgpack]
    assert [outcome.status for outcome in outcomes] == [200, 422]
    assert outcomes[0].result is not None and outcomes[0].result.accounts[0].available.count(".") == 1
    assert outcomes[1].error is not None and outcomes[1].error.code == "INVALID_REQUEST"
