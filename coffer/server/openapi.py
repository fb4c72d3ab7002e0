"""The OpenAPI 3.1 document of the API, built from the same structs that decode requests.

Request schemas come from msgspec, so the document cannot drift from what the server accepts;
response shapes are written out here once, as the contract in shared/API.md shows them.
"""

import functools
from typing import Any

import msgspec

from coffer import __version__
from coffer.core.errors import ErrorCode
from coffer.server import requests as bodies

_amount_schema = {"type": "string", "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,18})?$", "examples": ["12.50"]}
_money_map = {"type": "object", "additionalProperties": _amount_schema}

_account = {
    "type": "object",
    "required": ["account_id", "asset", "scale", "state", "available", "version", "seq"],
    "properties": {
        "account_id": {"type": "string"},
        "asset": {"type": "string"},
        "scale": {"type": "integer"},
        "state": {"type": "string", "enum": ["NORMAL", "LOCKED", "DELETED"]},
        "lower_limit": _amount_schema,
        "upper_limit": {"anyOf": [_amount_schema, {"type": "null"}]},
        "available": _amount_schema,
        "reservations": _money_map,
        "pending_in": _money_map,
        "pending_out": _money_map,
        "version": {"type": "integer"},
        "seq": {"type": "integer"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_error = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
                "message": {"type": "string"},
                "account_id": {"type": "string"},
            },
        }
    },
}
_command_result = {
    "type": "object",
    "required": ["seq", "log_index", "accounts"],
    "properties": {
        "seq": {"type": "integer"},
        "log_index": {"type": "integer"},
        "accounts": {"type": "array", "items": {"$ref": "#/components/schemas/Account"}},
        "compensation": {"type": "string", "enum": ["COMPENSATED", "NULL_COMPENSATED"]},
    },
}
_event = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "time": {"type": "string", "format": "date-time"},
        "log_index": {"type": "integer"},
        "dedup_id": {"type": ["string", "null"]},
        "type": {"type": "string"},
        "accounts": {"type": "array", "items": {"$ref": "#/components/schemas/Account"}},
        "prev_hash": {"type": "string"},
        "hash": {"type": "string"},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    described = {
        401: "missing or unknown API key",
        403: "role not allowed",
        404: "unknown account",
        409: "rejected by a ledger rule; nothing changed",
        413: "body too large",
        422: "malformed request; it never reached the log",
        503: "NOT_AVAILABLE: behind min_seq, or the log is unreachable",
        507: "NOT_AVAILABLE: this node's disk is full (no Retry-After; nothing was stored; try another node)",
    }
    return {
        str(status): {
            "description": described[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_account_path = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_seq = {"type": "integer", "minimum": 0}
_time = {"type": "string", "description": "RFC 3339 or Unix epoch seconds"}
_limit = {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}


@functools.cache
def openapi_document() -> dict[str, Any]:
    structs = sorted(set(bodies.body_types.values()), key=lambda struct: struct.__name__)
    (_, *_), components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    # Amount fields are strings of a strict grammar: say so rather than a bare "string".
    for schema in components.values():
        for name, prop in schema.get("properties", {}).items():
            if name in bodies.amount_fields:
                if prop.get("type") == "string":
                    schema["properties"][name] = _amount_schema
                elif "anyOf" in prop:
                    prop["anyOf"] = [_amount_schema if option.get("type") == "string" else option for option in prop["anyOf"]]
    components.update({"Account": _account, "Error": _error, "CommandResult": _command_result, "Event": _event})

    def command(body: str, description: str, path_account: bool = False) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": description,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            },
            "responses": {"200": _json({"$ref": "#/components/schemas/CommandResult"}), **_errors(401, 403, 409, 413, 422, 503, 507)},
        }
        if path_account:
            operation["parameters"] = [_account_path]
        return {"post": operation}

    commands_item = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "enum": sorted(bodies.body_types)}},
    }
    paths: dict[str, Any] = {
        "/v1/accounts": {
            **command("CreateAccountBody", "Create an account"),
            "get": {
                "summary": "Many accounts, all as of one seq",
                "parameters": [
                    _query("ids", {"type": "string"}, "comma-separated account ids", required=True),
                    _query("at_seq", _seq),
                    _query("min_seq", _seq),
                ],
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 422, 503)},
            },
        },
        "/v1/accounts/{account_id}": {
            "get": {
                "summary": "One account with all sections",
                "parameters": [_account_path, _query("min_seq", _seq)],
                "responses": {"200": _json({"$ref": "#/components/schemas/Account"}), **_errors(401, 403, 404, 422, 503)},
            }
        },
        "/v1/accounts/{account_id}/history": {
            "get": {
                "summary": "Every version of an account, oldest first",
                "parameters": [
                    _account_path,
                    _query("from_seq", _seq),
                    _query("to_seq", _seq),
                    _query("from_time", _time),
                    _query("to_time", _time),
                    _query("limit", _limit),
                ],
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 404, 422, 503)},
            }
        },
        "/v1/accounts/{account_id}/limits": command("UpdateLimitsBody", "Change limits", path_account=True),
        "/v1/accounts/{account_id}/lock": command("AccountBody", "Lock an account", path_account=True),
        "/v1/accounts/{account_id}/unlock": command("AccountBody", "Unlock an account", path_account=True),
        "/v1/accounts/{account_id}/delete": command("AccountBody", "Delete an empty account", path_account=True),
        "/v1/transfers": command("TransferBody", "Move money between two accounts"),
        "/v1/batch-operations": command("BatchOperationBody", "Signed legs on many accounts, all or nothing"),
        "/v1/reservations": command("ReserveBody", "Freeze money"),
        "/v1/releases": command("ReleaseBody", "Unfreeze money"),
        "/v1/tcc/try": command("TccTryBody", "Two-phase: hold"),
        "/v1/tcc/confirm": command("TxnBody", "Two-phase: confirm"),
        "/v1/tcc/cancel": command("TxnBody", "Two-phase: cancel"),
        "/v1/compensations": command("CompensateBody", "Undo a command by its dedup_id"),
        "/v1/commands": {
            "post": {
                "summary": "Up to 8190 commands in one request, each answered on its own",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["commands"],
                                "properties": {
                                    "commands": {"type": "array", "minItems": 1, "maxItems": 8190, "items": commands_item}
                                },
                            }
                        }
                    },
                },
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 413, 422, 503, 507)},
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Events by seq and time range",
                "parameters": [
                    _query("from_seq", _seq),
                    _query("to_seq", _seq),
                    _query("from_time", _time),
                    _query("to_time", _time),
                    _query("limit", _limit),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
                        }
                    ),
                    **_errors(401, 403, 422, 503),
                },
            }
        },
        "/v1/events/stream": {
            "get": {
                "summary": "The event feed: JSON lines, one event a line with its canonical bytes (base64), then new ones as they come",
                "parameters": [_query("from_seq", _seq)],
                "responses": {
                    "200": {"description": "application/x-ndjson, heartbeats between events"},
                    **_errors(401, 403, 422),
                },
            }
        },
        "/v1/audit/head": {
            "get": {"summary": "The chain head", "responses": {"200": _json({"type": "object"}), **_errors(401, 403)}}
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"})}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 says what the node waits for (waiting_for), e.g. replaying log 120000/200000",
                "responses": {"200": _json({"type": "object"}), **_errors(503)},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
        "/admin/log-level": {
            "put": {
                "summary": "Change the log level",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"level": {"type": "string"}}}}},
                },
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 422)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Coffer", "version": __version__, "description": "A strongly consistent wallet ledger."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"apiKey": []}, {}],
    }
