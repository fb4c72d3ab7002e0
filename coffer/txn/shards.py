"""Talking to the shards: one keep-alive HTTP client per shard process, on loopback or on another node.

Every shard is a full Coffer node (its own log, state machine, seq, chain and snapshots) that
listens on a loopback port of its own; the router and the coordinator reach it through its public
API. A shard that does not answer raises :class:`ShardUnavailable`: the outcome of what was sent is
then unknown, and the caller must not guess it.

A shard this node does not host (``coffer serve --host-shards``) is reached through a node that
does: the request goes as it is to that node's router, under ``/v1/internal/shards/<k>``, which
hands it to its own shard process. The hosts come from the cluster's directory of live routers
(:mod:`coffer.txn.node_directory`); when one does not answer, or no longer hosts the shard, the
next one is tried. Sending again is safe: every command carries its ``dedup_id`` and reads change
nothing (the same reason :mod:`coffer.txn.http_pool` resends on a stale connection).
"""

import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec

from coffer.txn.http_pool import HttpPool, HttpResponse, PoolError

shard_request_timeout_s = 10.0  # a shard answers within its own 20 s cap; past this, unknown
forward_prefix = "/v1/internal/shards"
forward_token_header = "x-coffer-forward-token"
not_hosted_header = "x-coffer-not-hosted"  # a node's answer for a shard it does not host: try another


def forward_token(cluster_secret: bytes) -> str:
    """What a node presents to another to forward a shard request: derived from the cluster's secret
    (which also signs checkpoints), so the secret itself never travels."""
    return hashlib.sha256(b"coffer-forward\0" + cluster_secret).hexdigest()


def _pool_of(url: str, headers: dict[str, str] | None = None) -> HttpPool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return HttpPool(parts.hostname, parts.port, shard_request_timeout_s, headers)


class ShardUnavailable(Exception):
    """A shard did not answer (or answered 503): what was sent may or may not have happened."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard


class ShardClients:
    """The shards as a router sees them: ``urls[k]`` is shard k's loopback URL on this node, or None
    when another node hosts it (``hosts_of`` then names those nodes' URLs)."""

    def __init__(
        self, urls: list[str | None], hosts_of: Callable[[int], list[str]] | None = None, token: str | None = None
    ) -> None:
        assert hosts_of is not None or all(url is not None for url in urls), "a shard hosted elsewhere needs a directory"
        self.urls = urls
        self._pools = [None if url is None else _pool_of(url) for url in urls]
        self._hosts_of = hosts_of
        self._remote_headers = {forward_token_header: token} if token is not None else {}
        self._remote_pools: dict[str, HttpPool] = {}
        # Only the event feed (a stream without end) goes through httpx.
        self.streaming = [None if url is None else httpx.AsyncClient(base_url=url, timeout=None) for url in urls]
        self._remote_streaming: dict[str, httpx.AsyncClient] = {}

    @property
    def count(self) -> int:
        return len(self._pools)

    def hosted(self, shard: int) -> bool:
        """Whether this node runs the shard's process."""
        return self._pools[shard] is not None

    async def send(
        self, shard: int, method: str, path: str, *, content: bytes | None = None, params: Any = None, content_type: str | None = None
    ) -> HttpResponse:
        """One request as it is (the router forwards bodies untouched)."""
        target = path
        if params:
            query = urlencode(list(params.items()) if isinstance(params, dict) else list(params))
            target = f"{path}?{query}"
        pool = self._pools[shard]
        if pool is None:
            return await self._send_elsewhere(shard, method, target, content, content_type)
        try:
            return await pool.request(method, target, content, content_type)
        except PoolError as error:
            raise ShardUnavailable(shard, str(error)) from None

    async def _send_elsewhere(self, shard: int, method: str, target: str, content: bytes | None, content_type: str | None) -> HttpResponse:
        """Through a node that hosts the shard; the next one when a node fails or no longer hosts it."""
        assert self._hosts_of is not None
        hosts = self._hosts_of(shard)
        if not hosts:
            raise ShardUnavailable(shard, "no live node hosts it")
        reasons: list[str] = []
        for url in hosts:
            pool = self._remote_pools.get(url)
            if pool is None:
                pool = self._remote_pools[url] = _pool_of(url, self._remote_headers)
            try:
                response = await pool.request(method, f"{forward_prefix}/{shard}{target}", content, content_type)
            except PoolError as error:
                reasons.append(f"{url}: {error}")
                continue
            if response.headers.get(not_hosted_header):
                reasons.append(f"{url}: does not host it")
                continue
            return response
        raise ShardUnavailable(shard, "no node hosting it answered (" + "; ".join(reasons) + ")")

    def stream_client(self, shard: int) -> tuple[httpx.AsyncClient, str]:
        """The client for an endless read of ``shard`` (the event feed), and the path prefix to use."""
        local = self.streaming[shard]
        if local is not None:
            return local, ""
        hosts = self._hosts_of(shard) if self._hosts_of is not None else []
        if not hosts:
            raise ShardUnavailable(shard, "no live node hosts it")
        client = self._remote_streaming.get(hosts[0])
        if client is None:
            client = self._remote_streaming[hosts[0]] = httpx.AsyncClient(base_url=hosts[0], timeout=None, headers=self._remote_headers)
        return client, f"{forward_prefix}/{shard}"

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
        for pool in [*self._pools, *self._remote_pools.values()]:
            if pool is not None:
                pool.close()
        for client in [*self.streaming, *self._remote_streaming.values()]:
            if client is not None:
                await client.aclose()
