"""Flows on a sharded node: the registry and the run records on shard 0, the money wherever it is.

Why shard 0: a run's start record resolves "the latest version" at its position in a log, so the
registry and the records must be in the same log; shard 0 is the one every router finds without
asking. The router runs the flows itself, through its own command path (:meth:`Router.command`):
a batch operation whose legs are on several shards becomes a cross-shard transaction there, with
no help from the flow. The runner and its recovery task are the same as on a single node; only
the :class:`~coffer.flows.runner.Ledger` differs.
"""

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coffer.core.errors import ErrorCode
from coffer.flows import definition
from coffer.flows.compiler import derived_dedup_id
from coffer.flows.http import decode_run, is_flow_name
from coffer.flows.runner import Answer, FlowRunner, StoredRun, StoredVersion
from coffer.http.auth import Role
from coffer.http.responses import HttpError, json_response, read_body
from coffer.server.command_table import routes_by_kind
from coffer.server.requests import RequestError

if TYPE_CHECKING:
    from coffer.txn.router import Router

registry_shard = 0
_sorted = msgspec.json.Encoder(order="sorted")


def _record(view: dict[str, Any]) -> StoredRun:
    finished = view.get("status") != "RUNNING"
    return StoredRun(
        view["run_id"],
        view["flow"],
        view["version"],
        _sorted.encode(view.get("params", {})),
        _sorted.encode(view) if finished else None,
        int(view.get("started_ms", 0)),
    )


class RouterLedger:
    def __init__(self, router: "Router") -> None:
        self.router = router

    async def flow_version(self, name: str, version: int | None) -> StoredVersion | None:
        if not is_flow_name(name):
            return None
        params = None if version is None else [("version", str(version))]
        status, view = await self.router.shards.get(registry_shard, f"/v1/flows/{quote(name, safe='')}", params)
        if status != 200:
            return None
        found = view.pop("version")
        view.pop("name", None)
        return StoredVersion(found, definition.canonical_bytes(definition.decode(view)))

    async def run_record(self, run_id: str) -> StoredRun | None:
        status, view = await self.router.shards.get(registry_shard, f"/v1/flows/runs/{quote(run_id, safe='')}")
        return _record(view) if status == 200 else None

    async def open_runs(self, limit: int) -> list[StoredRun]:
        status, answer = await self.router.shards.get(registry_shard, "/v1/flows/runs")
        return [_record(view) for view in answer.get("runs", [])[:limit]] if status == 200 else []

    async def scales(self, assets: list[str], accounts: list[str]) -> dict[str, int]:
        groups: dict[int, list[str]] = {}
        for account_id in accounts:
            groups.setdefault(self.router.shard_map.shard_of(account_id), []).append(account_id)
        answers = await asyncio.gather(
            *(self.router.shards.get(shard, "/v1/accounts", [("ids", ",".join(ids))]) for shard, ids in groups.items())
        )
        found: dict[str, int] = {}
        for status, answer in answers:
            if status == 200:
                for view in answer.get("accounts", {}).values():
                    found.setdefault(view["asset"], view["scale"])
        return {asset: found[asset] for asset in assets if asset in found}

    async def send(self, kind: str, body: dict[str, Any]) -> Answer:
        from coffer.txn.shards import ShardUnavailable

        path = routes_by_kind[kind].path
        assert path is not None, kind  # a flow step is a command a client could send
        try:
            return await self.router.command(kind, body, None, path)
        except HttpError as refused:
            return refused.status, {"error": {"code": refused.code, "message": refused.message}}
        except ShardUnavailable as error:
            return 503, {"error": {"code": ErrorCode.NOT_AVAILABLE.value, "message": str(error)}}

    async def _record_command(self, item: dict[str, Any]) -> Answer:
        from coffer.txn.shards import ShardUnavailable

        try:
            status, answer = await self.router.shards.post(registry_shard, "/v1/commands", {"commands": [item]})
        except ShardUnavailable as error:
            return 503, {"error": {"code": ErrorCode.NOT_AVAILABLE.value, "message": str(error)}}
        if status != 200:
            return status, answer
        (result,) = answer["results"]
        return result.pop("status"), result

    async def start(
        self, run_id: str, flow: str, version: int, params: bytes, together: tuple[str, dict[str, Any]] | None
    ) -> tuple[Answer, Answer | None]:
        item = {"type": "start_flow_run", "dedup_id": run_id, "flow": flow, "version": version, "params": params.decode()}
        started = await self._record_command(item)
        if together is None or started[0] != 200:
            return started, None
        return started, await self.send(*together)

    async def finish(self, run_id: str, outcome: bytes) -> Answer:
        item = {"type": "finish_flow_run", "dedup_id": derived_dedup_id(run_id, "finish"), "run_id": run_id, "outcome": outcome.decode()}
        return await self._record_command(item)


class RouterFlows:
    """The flows' routes on a sharded node's router."""

    def __init__(self, router: "Router") -> None:
        self.router = router
        self.runner = FlowRunner(RouterLedger(router))

    async def forward(self, request: Request, role: Role) -> Response:
        content = await request.body() if request.method == "PUT" else None
        return await self.router._forward(registry_shard, request, content)

    async def run(self, request: Request, role: Role) -> Response:
        try:
            body = decode_run(await read_body(request.headers, request.stream()))
        except RequestError as error:
            return json_response({"error": {"code": error.code.value, "message": error.message}}, 422)
        status, answer = await self.runner.run(request.path_params["name"], body.dedup_id, body.params, body.version, body.dry_run)
        return json_response(answer, status, {"Retry-After": "1"} if status == 503 else None)

    def routes(self) -> list[Route]:
        route, reader, operator, admin = self.router.route, Role.READER, Role.OPERATOR, Role.ADMIN
        return [
            route("/v1/flows", "GET", reader, self.forward),
            route("/v1/flows/runs", "GET", reader, self.forward),
            route("/v1/flows/runs/{run_id}", "GET", reader, self.forward),
            route("/v1/flows/{name}", "PUT", admin, self.forward),
            route("/v1/flows/{name}", "GET", reader, self.forward),
            route("/v1/flows/{name}/runs", "POST", operator, self.run),
        ]
