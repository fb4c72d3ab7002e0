"""Talking to the shards: one keep-alive HTTP client per shard process, on loopback.

Every shard is a full Coffer node (its own log, state machine, seq, chain and snapshots) that
listens on a loopback port of its own; the router and the coordinator reach it through its public
API. A shard that does not answer raises :class:`ShardUnavailable`: the outcome of what was sent is
then unknown, and the caller must not guess it.
"""

from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec

from coffer.txn.http_pool import HttpPool, HttpResponse, PoolError

shard_request_timeout_s = 10.0  # a shard answers within its own 20 s cap; past this, unknown


class ShardUnavailable(Exception):
    """A shard did not answer (or answered 503): what was sent may or may not have happened."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard


class ShardClients:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._pools = []
        for url in urls:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None, url
            self._pools.append(HttpPool(parts.hostname, parts.port, shard_request_timeout_s))
        # Only the event feed (a stream without end) goes through httpx.
        self.streaming = [httpx.AsyncClient(base_url=url, timeout=None) for url in urls]

    @property
    def count(self) -> int:
        return len(self._pools)

    async def send(
        self, shard: int, method: str, path: str, *, content: bytes | None = None, params: Any = None, content_type: str | None = None
    ) -> HttpResponse:
        """One request as it is (the router forwards bodies untouched)."""
        target = path
        if params:
            query = urlencode(list(params.items()) if isinstance(params, dict) else list(params))
            target = f"{path}?{query}"
        try:
            return await self._pools[shard].request(method, target, content, content_type)
        except PoolError as error:
            raise ShardUnavailable(shard, str(error)) from None

    async def post(self, shard: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST a JSON body; (status, answer). 503 and transport errors raise ShardUnavailable."""
        response = await self.send(shard, "POST", path, content=msgspec.json.encode(body), content_type="application/json")
        return self._answer(shard, response)

    async def get(self, shard: int, path: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        response = await self.send(shard, "GET", path, params=params)
        return self._answer(shard, response)

    @staticmethod
    def _answer(shard: int, response: HttpResponse) -> tuple[int, dict[str, Any]]:
        if response.status_code == 503 or response.status_code >= 500:
            raise ShardUnavailable(shard, f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            return response.status_code, msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise ShardUnavailable(shard, f"HTTP {response.status_code} with a body that is not JSON") from None

    async def close(self) -> None:
        for pool in self._pools:
            pool.close()
        for client in self.streaming:
            await client.aclose()
