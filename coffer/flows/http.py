"""The flows' HTTP routes on a node, and the node's side of a flow runner (:class:`NodeLedger`).

Handlers answer ``(status, body)``; :meth:`Api.route` checks the role and encodes. Routes
(docs/api.md): ``PUT /v1/flows/{name}`` (admin: validate, then register the next version
through the log), ``GET /v1/flows``, ``GET /v1/flows/{name}?version=``, ``POST
/v1/flows/{name}/runs`` (operator), ``GET /v1/flows/runs`` (unfinished runs) and ``GET
/v1/flows/runs/{run_id}``. Registry reads come from the applied state (every replica holds the
same registry); commands go through the node's pipeline like any other request, with the caller's
credential in their events.
"""

import re
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from coffer.core import commands as core
from coffer.core.accounts import Result
from coffer.core.commands import flow_name_length_max
from coffer.core.errors import ErrorCode
from coffer.flows import definition
from coffer.flows.compiler import derived_dedup_id
from coffer.flows.definition import FlowInvalid
from coffer.flows.runner import Answer, FlowRunner, StoredRun, StoredVersion
from coffer.http.auth import Role
from coffer.http.responses import read_body
from coffer.http.views import error_body, rejection_body
from coffer.server import command_table
from coffer.server import requests as bodies
from coffer.server.pipeline import LogUnavailable

if TYPE_CHECKING:
    from coffer.server.app import Api

flow_name_pattern = rf"^[A-Za-z0-9._:-]{{1,{flow_name_length_max}}}$"
FlowName = Annotated[str, msgspec.Meta(pattern=flow_name_pattern)]
RunId = Annotated[str, msgspec.Meta(min_length=1, max_length=core.id_length_max, pattern=r"^[A-Za-z0-9._:-]+$")]
open_runs_limit_max = 1000


class RunBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dedup_id: RunId
    params: dict[str, Any] = {}
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None
    dry_run: bool = False


_run_decoder = msgspec.json.Decoder(RunBody)


def decode_run(data: bytes) -> RunBody:
    try:
        return _run_decoder.decode(data)
    except msgspec.ValidationError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, str(error)) from None
    except msgspec.DecodeError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {error}") from None


def split_put_body(data: bytes, name: str) -> tuple[definition.Flow, str]:
    """The validated definition of a PUT body and the dedup_id to register it under."""
    try:
        fields = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "body must be a JSON object")
    dedup_id = fields.pop("dedup_id", None)
    if dedup_id is None:
        dedup_id = f"flow:{uuid.uuid4()}"  # each PUT without one is a new version
    if not isinstance(dedup_id, str) or not 0 < len(dedup_id) <= core.id_length_max:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "dedup_id must be 1 to 128 characters")
    bodies.refuse_reserved_command_ids(dedup_id)
    if fields.get("name", name) != name:
        raise bodies.RequestError(ErrorCode.INVALID_REQUEST, "name in the body differs from the path")
    try:
        flow = definition.load(fields)
    except FlowInvalid as error:
        raise bodies.RequestError(ErrorCode.FLOW_INVALID, str(error)) from None
    return flow, dedup_id


def definition_view(name: str, version: int, stored: bytes) -> dict[str, Any]:
    """The definition in the form PUT accepts, with its name and version."""
    view = msgspec.json.decode(stored)
    view["name"] = name
    view["version"] = version
    return view


def _result_answer(result: Result) -> Answer:
    if result.ok:
        answer: dict[str, Any] = {"seq": result.seq}
        if result.compensation is not None:
            answer["compensation"] = result.compensation
        return 200, answer
    return 409, rejection_body(result)


class NodeLedger:
    """A runner's view of one node: the applied state and the node's pipeline."""

    def __init__(self, api: "Api") -> None:
        self.api = api

    @property
    def machine(self) -> Any:
        return self.api.replica.machine

    async def flow_version(self, name: str, version: int | None) -> StoredVersion | None:
        versions = self.machine.flows.get(name)
        if not versions:
            return None
        if version is None:
            version = len(versions)
        if not 1 <= version <= len(versions):
            return None
        return StoredVersion(version, versions[version - 1].definition)

    async def run_record(self, run_id: str) -> StoredRun | None:
        run = self.machine.flow_runs.get(run_id)
        if run is None:
            return None
        return StoredRun(run.run_id, run.flow, run.version, run.params, run.outcome, run.time_ms)

    async def open_runs(self, limit: int) -> list[StoredRun]:
        found = []
        for run_id in list(self.machine.open_flow_runs)[:limit]:
            record = await self.run_record(run_id)
            if record is not None:
                found.append(record)
        return found

    async def scales(self, assets: list[str], accounts: list[str]) -> dict[str, int]:
        known = self.machine.asset_scales
        return {asset: known[asset] for asset in assets if asset in known}

    def _command(self, kind: str, body: dict[str, Any]) -> core.Command:
        converted = bodies.convert_body(command_table.routes_by_kind[kind].body_type, body)
        return command_table.to_command(kind, converted, self.api._scales())

    async def _submit(self, commands: list[core.Command]) -> list[Answer]:
        try:
            outcomes = await self.api._submit(commands)
        except LogUnavailable as error:
            return [(503, {"error": {"code": ErrorCode.NOT_AVAILABLE.value, "message": str(error)}})] * len(commands)
        return [_result_answer(outcome.result) for outcome in outcomes]

    async def send(self, kind: str, body: dict[str, Any]) -> Answer:
        try:
            command = self._command(kind, body)
        except bodies.RequestError as error:
            return 422, {"error": {"code": error.code.value, "message": error.message}}
        (answer,) = await self._submit([command])
        return answer

    async def start(
        self, run_id: str, flow: str, version: int, params: bytes, together: tuple[str, dict[str, Any]] | None
    ) -> tuple[Answer, Answer | None]:
        start = core.StartFlowRun(dedup_id=run_id, flow=flow, version=version, params=params)
        if together is None:
            (answer,) = await self._submit([start])
            return answer, None
        try:
            command = self._command(*together)
        except bodies.RequestError as error:
            (answer,) = await self._submit([start])
            return answer, (422, {"error": {"code": error.code.value, "message": error.message}})
        # One submit, one entry: the start record and the command land together or not at all.
        started, first = await self._submit([start, command])
        return started, first

    async def finish(self, run_id: str, outcome: bytes) -> Answer:
        finish = core.FinishFlowRun(dedup_id=_finish_id(run_id), run_id=run_id, outcome=outcome)
        (answer,) = await self._submit([finish])
        return answer


def _finish_id(run_id: str) -> str:
    return derived_dedup_id(run_id, "finish")


class FlowRoutes:
    """The flows' routes on a node (``Api.routes`` includes them)."""

    def __init__(self, api: "Api") -> None:
        self.api = api
        self.runner = FlowRunner(NodeLedger(api), finish_in_background=True)

    async def put_flow(self, request: Request, role: Role) -> Answer:
        name = request.path_params["name"]
        flow, dedup_id = split_put_body(await self.api._body(request), name)
        (outcome,) = await self.api._submit([core.PutFlow(dedup_id=dedup_id, name=name, definition=flow.canonical)])
        result = outcome.result
        if not result.ok:
            return 409, rejection_body(result)
        versions = self.api.replica.machine.flows.get(name, [])
        version = next((stored.version for stored in reversed(versions) if stored.seq == result.seq), None)
        if version is None:  # the retry of a PUT with a dedup_id used for another flow's name
            return 409, error_body(ErrorCode.DEDUP_ID_REUSED, "dedup_id was used for another flow")
        return 200, {"name": name, "version": version, "seq": result.seq}

    async def list_flows(self, request: Request, role: Role) -> Answer:
        flows = []
        for name, versions in sorted(self.api.replica.machine.flows.items()):
            latest = msgspec.json.decode(versions[-1].definition)
            flows.append({"name": name, "version": len(versions), "mode": latest.get("mode"), "description": latest.get("description", "")})
        return 200, {"flows": flows}

    async def get_flow(self, request: Request, role: Role) -> Answer:
        name = request.path_params["name"]
        version_text = request.query_params.get("version")
        version = None
        if version_text:
            if not version_text.isascii() or not version_text.isdigit() or len(version_text) > 10:
                return 422, error_body(ErrorCode.INVALID_REQUEST, "version must be a positive integer")
            version = int(version_text)
        stored = await self.runner.ledger.flow_version(name, version)
        if stored is None:
            return 404, error_body(ErrorCode.FLOW_NOT_FOUND, f"no flow {name!r}" + ("" if version is None else f" version {version}"))
        return 200, definition_view(name, stored.version, stored.definition)

    async def run_flow(self, request: Request, role: Role) -> Answer:
        body = decode_run(await self.api._body(request))
        return await self.runner.run(request.path_params["name"], body.dedup_id, body.params, body.version, body.dry_run)

    async def get_run(self, request: Request, role: Role) -> Answer:
        return await self.runner.view(request.path_params["run_id"])

    async def open_runs(self, request: Request, role: Role) -> Answer:
        records = await self.runner.ledger.open_runs(open_runs_limit_max)
        runs = [
            {"run_id": r.run_id, "flow": r.flow, "version": r.version, "status": "RUNNING", "params": msgspec.json.decode(r.params), "started_ms": r.time_ms}
            for r in records
        ]
        return 200, {"runs": runs}

    def routes(self) -> list[Route]:
        api = self.api
        reader, operator, admin = Role.READER, Role.OPERATOR, Role.ADMIN
        return [
            # Handlers answer (status, body), which Api.route encodes like a Response.
            api.route("/v1/flows", "GET", reader, self.list_flows),  # type: ignore[arg-type]
            api.route("/v1/flows/runs", "GET", reader, self.open_runs),
            api.route("/v1/flows/runs/{run_id}", "GET", reader, self.get_run),
            api.route("/v1/flows/{name}", "PUT", admin, self.put_flow),
            api.route("/v1/flows/{name}", "GET", reader, self.get_flow),
            api.route("/v1/flows/{name}/runs", "POST", operator, self.run_flow),
        ]


class FlowRunFastPath:
    """ASGI front for ``POST /v1/flows/{name}/runs``, the flows' hot route: answered without the
    framework's routing, request and response objects (as the node's fast command routes are),
    with the same role check and error answers as :meth:`Api.route`. Everything else passes on."""

    prefix = "/v1/flows/"
    suffix = "/runs"

    def __init__(self, api: "Api", app: Any) -> None:
        self.api = api
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        name = path[len(self.prefix) : -len(self.suffix)] if path.startswith(self.prefix) and path.endswith(self.suffix) else ""
        if not name or "/" in name or scope["method"] != "POST" or not is_flow_name(name):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}

        async def chunks() -> Any:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        async def work(role: Role) -> Answer:
            body = decode_run(await read_body(headers, chunks()))
            return await self.api.flows.runner.run(name, body.dedup_id, body.params, body.version, body.dry_run)

        status, answer = await self.api.guarded(Role.OPERATOR, headers, work)
        encoded = _encode(answer)
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(encoded)).encode())]
        if status == 503:
            response_headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": encoded})


_encode = msgspec.json.Encoder().encode
_name_check = re.compile(flow_name_pattern)


def is_flow_name(name: str) -> bool:
    """Whether ``name`` is a flow name (else the framework answers, with its usual 404/422)."""
    return _name_check.fullmatch(name) is not None
