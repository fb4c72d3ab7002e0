"""The node routes that people at a console (or a shell) need beside the ledger's own.

Job: answer the questions an operator asks of one node, and measure what a monitoring system
watches, without touching how commands are logged and applied:

- ``GET /v1/search/accounts?prefix=P&limit=N&after=ID``: the accounts whose id starts with ``P``,
  in id order, a page at a time (:mod:`coffer.server.account_search`);
- ``GET /v1/whoami``: the role and key id of the key presented (no role for a missing or unknown
  key, rather than a 401), so a console shows only the actions that key may take (the node refuses
  the others anyway);
- ``GET /v1/audit/verify``: the node re-verifies its own stored chain (:mod:`coffer.server.chain_audit`);
- ``GET /v1/shards``: a one-shard view, the same shape as a sharded node's, so tools need not care;
- metrics: every HTTP answer by method and status, request latency, the event store's and the
  log's lag behind the state machine, and the replica checkpoints' agreement with the peers.

Method: :class:`NodeTools` is built by :class:`coffer.server.app.Api` and adds its routes to the
API's list; :class:`HttpMetrics` wraps the whole ASGI app, so the fast command routes are counted
with the rest.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.http.auth import ApiKeys, Role
from coffer.http.views import account_view
from coffer.query import reads
from coffer.server.account_search import AccountIndex, account_id_pattern, search_limit_default, search_limit_max
from coffer.server.chain_audit import ChainAudit

if TYPE_CHECKING:
    from coffer.server.app import Api

search_path = "/v1/search/accounts"
log_index_timeout_s = 2.0  # a scrape never waits longer for the log's last index (a cluster's log is remote)
# Paths whose time is not a request's latency: the feed streams for as long as a client follows it,
# and static files of the console and the API docs say nothing about the ledger.
_untimed_prefixes = ("/v1/events/stream", "/console", "/docs")
latency_buckets_s = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)


_json = msgspec.json.Encoder()


def json_response(body: Any) -> Response:
    return Response(_json.encode(body), media_type="application/json")


class SearchError(reads.ReadError):
    """A malformed search parameter (answered 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(422, ErrorCode.INVALID_REQUEST, message)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries: ``X-API-Key``, or ``Authorization: Bearer``."""
    presented = headers.get("x-api-key")
    authorization = headers.get("authorization")
    if presented is None and authorization is not None and authorization[:7].lower() == "bearer ":
        presented = authorization[7:].strip()
    return presented


def whoami(keys: ApiKeys, headers: Mapping[str, str]) -> dict[str, Any]:
    """The caller's role and key id: admin without a key id on a node without keys (loopback),
    no role for a missing or unknown key."""
    if not keys:
        return {"role": Role.ADMIN.name.lower(), "key_id": None, "keys_required": False}
    identity = keys.identify(presented_key(headers))
    if identity is None:
        return {"role": None, "key_id": None, "keys_required": True}
    return {"role": identity[0].name.lower(), "key_id": identity[1], "keys_required": True}


def search_params(params: Mapping[str, str]) -> tuple[str, int, str | None]:
    """(prefix, limit, after) of an account search; :class:`SearchError` (422) when one is malformed."""
    prefix = params.get("prefix", "")
    after = params.get("after") or None
    for name, value in (("prefix", prefix), ("after", after or "")):
        if not account_id_pattern.fullmatch(value):
            raise SearchError(f"{name} must be at most 128 characters of A-Za-z0-9._:-")
    text = params.get("limit") or str(search_limit_default)
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= search_limit_max:
        raise SearchError(f"limit must be an integer from 1 to {search_limit_max}")
    return prefix, int(text), after


class NodeMetrics:
    """The metrics beyond the ledger's counters: HTTP answers, latency, lags, checkpoint agreement."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "coffer_http_requests", "HTTP requests answered, by method and status code", ["method", "status"], registry=registry
        )
        self.request_seconds = Histogram(
            "coffer_http_request_seconds",
            "Time from a request's arrival to the end of its answer (not the event feed or static files)",
            ["method"],
            buckets=latency_buckets_s,
            registry=registry,
        )
        self.store_lag = Gauge(
            "coffer_event_store_lag_events", "Events applied but not yet in the event store (history reads wait for them)", registry=registry
        )
        self.log_last_index = Gauge("coffer_log_last_index", "Index of the last durable entry in the command log", registry=registry)
        self.apply_lag = Gauge(
            "coffer_log_apply_lag_entries", "Durable log entries this replica has not applied yet", registry=registry
        )
        self.diverged = Gauge(
            "coffer_checkpoint_diverged", "1 when this replica's head differs from the majority of its peers' (it stops serving)", registry=registry
        )
        self.peers_agreeing = Gauge(
            "coffer_checkpoint_peers_agreeing", "Peers whose last compared checkpoint equals this replica's", registry=registry
        )
        self.peers_disagreeing = Gauge(
            "coffer_checkpoint_peers_disagreeing", "Peers whose last compared checkpoint differs from this replica's", registry=registry
        )
        self.peer_agrees = Gauge(
            "coffer_checkpoint_peer_agrees", "Per peer: 1 if its last compared checkpoint equals this replica's, else 0", ["peer"], registry=registry
        )
        self._status_counters: dict[tuple[str, int], Any] = {}

    def answered(self, method: str, status: int, seconds: float | None) -> None:
        counter = self._status_counters.get((method, status))
        if counter is None:
            counter = self._status_counters[(method, status)] = self.requests.labels(method, str(status))
        counter.inc()
        if seconds is not None:
            self.request_seconds.labels(method).observe(seconds)


class HttpMetrics:
    """ASGI middleware: counts every HTTP answer by method and status, and times it."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    @property
    def api(self) -> Any:
        """The node's :class:`coffer.server.app.Api`, as the app this wraps gives it (serve configures it)."""
        return self.app.api  # type: ignore[attr-defined]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an app that raises before answering: the server answers 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            timed = not path.startswith(_untimed_prefixes)
            self.metrics.answered(scope["method"], status, time.perf_counter() - started if timed else None)


class NodeTools:
    """The routes and metrics of this module for one node's :class:`~coffer.server.app.Api`."""

    def __init__(self, api: "Api") -> None:
        self.api = api
        self.index = AccountIndex()
        self.metrics = NodeMetrics(api.metrics.registry)
        self.audit = ChainAudit(api.replica.store, lambda: api.replica.machine, api._store_reached)

    def routes(self) -> list[Route]:
        api, reader = self.api, Role.READER
        return [
            api.route(search_path, "GET", reader, self.search),
            api.route("/v1/audit/verify", "GET", reader, self.verify),
            api.route("/v1/shards", "GET", reader, self.shards),
        ]

    def public_routes(self) -> list[Route]:
        """Routes that need no key: who the caller is, asked before signing in."""

        async def who(request: Request) -> Response:
            return json_response(whoami(self.api.keys, request.headers))

        return [Route("/v1/whoami", who, methods=["GET"])]

    async def search(self, request: Request, role: Role) -> Response:
        """A page of the accounts whose id starts with the prefix, in id order."""
        prefix, limit, after = search_params(request.query_params)
        await self.api._at_least(request)
        machine = self.api.replica.machine
        found, more = self.index.search(machine.accounts, prefix, limit, after)
        return json_response(
            {
                "seq": machine.seq,
                "accounts": [account_view(machine.accounts[account_id], machine.seq) for account_id in found],
                "next": found[-1] if more else None,
            }
        )

    async def verify(self, request: Request, role: Role) -> Response:
        self.api._pipeline()  # 503 while the node is starting: there is no head to verify yet
        return json_response(await self.audit.run())

    async def shards(self, request: Request, role: Role) -> Response:
        machine = self.api.replica.machine
        head = {"seq": machine.seq, "hash": machine.head.hex(), "log_index": machine.log_index}
        return json_response({"map": None, "shards": [{"shard": 0, "url": None, "head": head, "ready": self.api.ready}]})

    async def refresh_metrics(self) -> None:
        """Set the gauges a scrape reads; the log's last index is asked off the event loop, briefly."""
        replica, metrics = self.api.replica, self.metrics
        machine = replica.machine
        if replica.writer is not None:
            metrics.store_lag.set(max(0, machine.seq - replica.writer.stored_seq))
        try:
            last_index = await asyncio.wait_for(asyncio.to_thread(lambda: replica.log.last_index), log_index_timeout_s)
        except Exception:  # a log failing over: the gauges keep their last values, the scrape goes on
            last_index = None
        if last_index is not None:
            metrics.log_last_index.set(last_index)
            metrics.apply_lag.set(max(0, last_index - machine.log_index))
        monitor = self.api.checkpoints
        if monitor is not None:
            verdicts = monitor.peer_agreement()
            metrics.diverged.set(1 if monitor.diverged is not None else 0)
            metrics.peers_agreeing.set(sum(1 for agrees in verdicts.values() if agrees))
            metrics.peers_disagreeing.set(sum(1 for agrees in verdicts.values() if not agrees))
            for peer, agrees in verdicts.items():
                metrics.peer_agrees.labels(peer).set(1 if agrees else 0)
