"""The floor app of ``coffer bench load`` and ``coffer bench servers``: it answers like a node, in size and kind."""

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from coffer.bench import floor


def call(app: floor.FloorApp, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body[:3], "more_body": True}, {"type": "http.request", "body": body[3:]}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send))
    assert not chunks, "the whole body is read"
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_the_floor_answers_a_transfer_and_a_batch_like_a_node() -> None:
    app = floor.FloorApp(batch=7)
    status, headers, body = call(app, "/v1/transfers", b'{"amount":"1"}', [])
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert 400 < len(body) < 1000 and len(msgspec.json.decode(body)["accounts"]) == 2
    _, _, body = call(app, "/v1/commands", b'{"commands":[]}', [])
    assert [result["status"] for result in msgspec.json.decode(body)["results"]] == [200] * 7
    _, headers, body = call(app, "/v1/commands", b"\x81", [(b"content-type", b"application/msgpack")])
    assert headers[b"content-type"] == b"application/msgpack" and len(msgspec.msgpack.decode(body)["results"]) == 7


@pytest.mark.parametrize("server", floor.servers)
def test_each_server_starts_the_floor_and_stops_it(server: str) -> None:
    with floor.floor(3, server) as url:
        answer = httpx.post(f"{url}/v1/commands", content=b"{}")
        assert answer.status_code == 200 and len(answer.json()["results"]) == 3
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")
