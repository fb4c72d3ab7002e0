"""The flows' part of the node's OpenAPI document (merged by :mod:`coffer.server.openapi`).

The definition schema comes from the very msgspec structs the node validates with, so the
document cannot drift from what ``PUT /v1/flows/{name}`` accepts.
"""

from typing import Any

import msgspec

from coffer.flows.definition import FlowSpec
from coffer.flows.http import RunBody, flow_name_pattern

_error_statuses = {
    401: "missing or unknown API key",
    403: "role not allowed",
    404: "no flow (FLOW_NOT_FOUND) or no run (FLOW_RUN_NOT_FOUND) by that name",
    409: "the run ended rejected (FAILED, COMPENSATED, COMPENSATION_FAILED: the body is the run, with error), or DEDUP_ID_REUSED",
    413: "body too large",
    422: "malformed request, an invalid definition (FLOW_INVALID), params that do not fit the flow, or a failed check (FLOW_CHECK_FAILED); nothing was recorded",
    503: "NOT_AVAILABLE: the log did not answer; the run stays open: retry with the same dedup_id",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"description": _error_statuses[status], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for status in statuses
    }


def _json(name: str) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


_name_path = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": flow_name_pattern}}
_run_path = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}

_step = {
    "type": "object",
    "required": ["name", "type", "command"],
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string", "description": "the command type (as in POST /v1/commands)"},
        "command": {"type": "object", "description": "the body sent to that command's endpoint, dedup_id included"},
        "status": {"type": "integer", "description": "200, 409 or 422; absent in a dry run"},
        "seq": {"type": ["integer", "null"]},
        "txn_id": {"type": "string", "description": "a cross-shard transaction's id"},
        "compensation": {"type": "string"},
        "error": {"type": "object"},
    },
}
_run = {
    "type": "object",
    "required": ["run_id", "flow", "version", "status"],
    "properties": {
        "run_id": {"type": "string", "description": "the run's dedup_id"},
        "flow": {"type": "string"},
        "version": {"type": "integer"},
        "status": {"type": "string", "enum": ["SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED", "RUNNING", "DRY_RUN"]},
        "dry_run": {"type": "boolean"},
        "params": {"type": "object", "description": "as the run read them: amounts at their asset's scale"},
        "computed": {"type": "object", "additionalProperties": {"type": "string"}},
        "steps": {"type": "array", "items": _step},
        "compensations": {"type": "array", "items": _step, "description": "saga: the undos run after a rejected step, newest step first"},
        "error": {"type": "object", "description": "the rejection that ended the run"},
        "started_ms": {"type": "integer", "description": "RUNNING only: the log time of its start record, Unix ms"},
    },
}
_registered = {
    "type": "object",
    "required": ["name", "version", "seq"],
    "properties": {"name": {"type": "string"}, "version": {"type": "integer"}, "seq": {"type": "integer"}},
}
_flows = {
    "type": "object",
    "required": ["flows"],
    "properties": {
        "flows": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "integer", "description": "the latest"},
                    "mode": {"type": "string"},
                    "description": {"type": "string"},
                },
            },
        }
    },
}
_open_runs = {"type": "object", "required": ["runs"], "properties": {"runs": {"type": "array", "items": _run}}}


def flow_components() -> dict[str, Any]:
    (_, _), components = msgspec.json.schema_components([FlowSpec, RunBody], ref_template="#/components/schemas/{name}")
    components["FlowSpec"]["description"] = (
        "A flow definition (see docs/flows.md). PUT also takes an optional dedup_id (a retry then registers nothing new);"
        " name and version are answered by GET and may be sent back."
    )
    # Amount fields of a definition are expressions of the flow's language, not decimal amounts.
    for name in ("TransferSpec", "ReserveSpec", "ReleaseSpec", "LegSpec", "PreconditionSpec", "TccTrySpec", "ComputedSpec", "CheckSpec"):
        for field, prop in components.get(name, {}).get("properties", {}).items():
            if field in ("amount", "debit", "credit", "expected_balance", "min_balance", "max_balance", "timeout_s", "expr"):
                prop["x-coffer-expression"] = True
                prop["description"] = "an expression of the flow language (see docs/flows.md)"
    components.update({"FlowRun": _run, "FlowRegistered": _registered, "Flows": _flows, "OpenFlowRuns": _open_runs})
    return components


def flow_paths() -> dict[str, Any]:
    return {
        "/v1/flows": {
            "get": {
                "summary": "The registered flows, each with its latest version",
                "x-coffer-role": "reader",
                "parameters": [],
                "responses": {"200": _json("Flows"), **_errors(401, 403)},
            }
        },
        "/v1/flows/{name}": {
            "put": {
                "summary": "Register the next version of a flow (validated first; old versions are kept)",
                "x-coffer-role": "admin",
                "parameters": [_name_path],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowSpec"}}}},
                "responses": {"200": _json("FlowRegistered"), **_errors(401, 403, 409, 413, 422, 503)},
            },
            "get": {
                "summary": "A flow's definition as PUT takes it, with its version (the latest, or version=)",
                "x-coffer-role": "reader",
                "parameters": [_name_path, {"name": "version", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _json("FlowSpec"), **_errors(401, 403, 404, 422)},
            },
        },
        "/v1/flows/{name}/runs": {
            "post": {
                "summary": "Run a flow, exactly once by dedup_id: the commands it produced and their outcome (dry_run: shown, not applied)",
                "x-coffer-role": "operator",
                "parameters": [_name_path],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunBody"}}}},
                "responses": {"200": _json("FlowRun"), **_errors(401, 403, 404, 409, 413, 422, 503)},
            }
        },
        "/v1/flows/runs": {
            "get": {
                "summary": "Runs started and not finished yet, oldest first (a recovery task resumes them after 5 s)",
                "x-coffer-role": "reader",
                "parameters": [],
                "responses": {"200": _json("OpenFlowRuns"), **_errors(401, 403)},
            }
        },
        "/v1/flows/runs/{run_id}": {
            "get": {
                "summary": "A run: its outcome once finished, or its record while RUNNING",
                "x-coffer-role": "reader",
                "parameters": [_run_path],
                "responses": {"200": _json("FlowRun"), **_errors(401, 403, 404)},
            }
        },
    }
