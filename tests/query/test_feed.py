"""The node's event feed, ``GET /v1/events/stream``, read as a follower reads it."""

import base64
import json
import time
from hashlib import sha256
from typing import Any

import httpx

from coffer.http.feed_lines import heartbeat_interval_s
from tests.query.node_process import LoadedNode


def _lines(url: str, from_seq: str, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The first ``count`` lines of the feed from ``from_seq``."""
    lines: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{url}/v1/events/stream", params={"from_seq": from_seq}, timeout=timeout_s) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == count:
                break
    return lines


def test_the_feed_carries_the_canonical_bytes_of_every_event(mixed_node: LoadedNode) -> None:
    lines = _lines(mixed_node.url, "1", mixed_node.last_seq)
    assert [line["seq"] for line in lines] == list(range(1, mixed_node.last_seq + 1))
    prev_hash = bytes(32)
    for line in lines:
        assert line["prev_hash"] == prev_hash.hex()
        prev_hash = sha256(prev_hash + base64.b64decode(line["body"])).digest()
        assert line["hash"] == prev_hash.hex()
    assert lines[-1]["hash"] == mixed_node.head_hash
    listed = httpx.get(f"{mixed_node.url}/v1/events", params={"limit": 50}).json()["events"]
    assert [(event["seq"], event["hash"]) for event in listed] == [(line["seq"], line["hash"]) for line in lines[:50]]


def test_the_feed_starts_at_from_seq(mixed_node: LoadedNode) -> None:
    assert [line["seq"] for line in _lines(mixed_node.url, "100", 3)] == [100, 101, 102]


def test_a_caught_up_feed_sends_heartbeats(mixed_node: LoadedNode) -> None:
    started = time.monotonic()
    (line,) = _lines(mixed_node.url, str(mixed_node.last_seq + 1), 1, timeout_s=3 * heartbeat_interval_s)
    assert line == {"heartbeat": mixed_node.last_seq}
    assert time.monotonic() - started >= heartbeat_interval_s * 0.9


def test_a_bad_from_seq_is_refused(mixed_node: LoadedNode) -> None:
    for value in ("0", "-1", "x"):
        response = httpx.get(f"{mixed_node.url}/v1/events/stream", params={"from_seq": value})
        assert response.status_code == 422 and response.json()["error"]["code"] == "INVALID_REQUEST"
