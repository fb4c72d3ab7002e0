"""The OpenAPI 3.1 documents of the API: the node's, and the query server's subset.

The command routes (path, role, summary, body) come from the command table
(:mod:`coffer.server.command_table`) and their request schemas from msgspec, so the document
cannot drift from what the server routes and accepts; response shapes are written out here once.
Amounts have three schemas, as the server reads them: positive (transfer, reserve, release),
signed and non-zero (legs), and signed (limits, conditions, balances); a test checks each pattern
against the server's own parser. Magnitude bounds (``coffer.core.amounts.amount_max`` minor
units) depend on the asset's scale, which a pattern cannot know: the schemas say so in words.
``docs/api.md`` is generated from the node's document (:mod:`coffer.server.api_markdown`).
"""

import functools
from typing import Any

import msgspec

from coffer import __version__
from coffer.core.amounts import amount_digits_max, amount_max, scale_max
from coffer.core.errors import ErrorCode
from coffer.flows.openapi import flow_components, flow_paths
from coffer.notify.openapi import webhook_components, webhook_paths
from coffer.server import requests as bodies
from coffer.server.command_table import COMMAND_ROUTES, CommandRoute, routes_by_path

unsigned_amount_pattern = rf"^(0|[1-9][0-9]*)(\.[0-9]{{1,{scale_max}}})?$"
signed_amount_pattern = rf"^-?(0|[1-9][0-9]*)(\.[0-9]{{1,{scale_max}}})?$"
zero_amount_pattern = r"^-?0(\.0+)?$"
_amount_rules = (
    f"a decimal string with at most the asset's scale of decimals (scale <= {scale_max}); "
    f"at most {amount_max} minor units in magnitude"
)
positive_amount = {
    "type": "string",
    "pattern": unsigned_amount_pattern,
    "not": {"pattern": zero_amount_pattern},
    "maxLength": amount_digits_max + 2,
    "description": "A positive amount: " + _amount_rules + ". No sign, not zero.",
    "examples": ["12.50"],
}
signed_nonzero_amount = {
    "type": "string",
    "pattern": signed_amount_pattern,
    "not": {"pattern": zero_amount_pattern},
    "maxLength": amount_digits_max + 2,
    "description": "A signed amount that is not zero (a leg: negative takes money out, positive puts it in): "
    + _amount_rules
    + ".",
    "examples": ["-12.50", "100"],
}
signed_amount = {
    "type": "string",
    "pattern": signed_amount_pattern,
    "maxLength": amount_digits_max + 2,
    "description": "A signed amount (limits, conditions, balances): " + _amount_rules + ". \"-0\" means 0.",
    "examples": ["-12.50", "0.00"],
}
_positive_ref = {"$ref": "#/components/schemas/PositiveAmount"}
_nonzero_ref = {"$ref": "#/components/schemas/SignedNonZeroAmount"}
_signed_ref = {"$ref": "#/components/schemas/SignedAmount"}
_amount_schema = _signed_ref
# (struct, field) pairs whose amount must be positive or non-zero; every other amount field is signed.
_positive_fields = {
    ("TransferBody", "amount"),
    ("ReserveBody", "amount"),
    ("ReleaseBody", "amount"),
    ("VelocityLimitsBody", "amount_per_hour"),
    ("VelocityLimitsBody", "amount_per_day"),
}
_nonzero_fields = {("LegBody", "amount")}


# What a field means where its name and type do not say it all (rendered into docs/api.md too).
_field_notes = {
    ("CreateAccountBody", "scale"): "digits after the point of the asset's amounts",
    ("CreateAccountBody", "lower_limit"): "lowest available balance; absent means 0",
    ("CreateAccountBody", "upper_limit"): "highest available + reserved + pending; absent means none",
    ("UpdateLimitsBody", "lower_limit"): "absent: unchanged",
    ("UpdateLimitsBody", "upper_limit"): "null: no upper limit; absent: unchanged",
    ("CreateAccountBody", "stripes"): "sharded nodes only: a credit-only account spread over this many stripes on different"
    " shards, read as one balance (no limits; 422 on a single node)",
    ("SweepBody", "to_account_id"): "the ordinary account that receives every stripe's available",
    ("AccountBody", "account_id"): "from the path; if given here it must be the same",
    ("TransferBody", "expected_from_balance"): "only if the from account's available is exactly this",
    ("TransferBody", "expected_to_balance"): "only if the to account's available is exactly this",
    ("PreconditionBody", "expected_balance"): "available must be exactly this",
    ("PreconditionBody", "min_balance"): "available must be at least this",
    ("PreconditionBody", "max_balance"): "available must be at most this",
    ("PreconditionBody", "expected_version"): "the account's version must be this",
    ("ReleaseBody", "amount"): "absent: all of the reservation",
    ("TccTryBody", "timeout_s"): "cancel the try by itself this many seconds of log time after it (event tcc_expired)",
    ("TccTryBody", "legs"): "negative legs move available to pending_out; positive legs book pending_in",
    ("CompensateBody", "original_dedup_id"): "the transfer, batch operation or reservation to undo; unseen: a null compensation",
    ("VelocityLimitsBody", "amount_per_hour"): "most money that may leave the account in one UTC hour of log time; absent: no cap",
    ("VelocityLimitsBody", "amount_per_day"): "most money that may leave the account in one UTC day of log time; absent: no cap",
    ("VelocityLimitsBody", "debits_per_hour"): "most debits (commands taking money out) in one UTC hour; absent: no cap",
    ("VelocityLimitsBody", "debits_per_day"): "most debits in one UTC day; absent: no cap",
}


def _amount_ref(struct: str, field: str) -> dict[str, str]:
    if (struct, field) in _positive_fields:
        return _positive_ref
    if (struct, field) in _nonzero_fields:
        return _nonzero_ref
    return _signed_ref


_money_map = {"type": "object", "additionalProperties": _amount_schema}
_time_out = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with milliseconds"}
_next = {
    "type": ["string", "null"],
    "description": "pass as cursor= with the same other parameters to get the next page; null at the end",
}

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
        "seq": {"type": "integer", "description": "the last event seq this view reflects"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "velocity": {
            "type": "object",
            "description": "only with velocity caps, only on the latest view: the caps and what was used in the UTC hour and day"
            " that hold the ledger's time",
        },
        "time": {**_time_out, "description": "history only: the time of the event that made this version"},
        "stripes": {
            "type": "array",
            "description": "a striped account only: its stripes (account_id, shard, available); the money sections are their sums",
            "items": {"type": "object"},
        },
        "stripe_seqs": {
            "type": "object",
            "description": "a striped account only: the seq each shard holding stripes answered, by shard",
            "additionalProperties": {"type": "integer"},
        },
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
_account_ref = {"$ref": "#/components/schemas/Account"}
_command_result = {
    "type": "object",
    "required": ["seq", "log_index", "accounts"],
    "properties": {
        "seq": {"type": "integer"},
        "log_index": {"type": "integer"},
        "accounts": {"type": "array", "items": _account_ref},
        "compensation": {"type": "string", "enum": ["COMPENSATED", "NULL_COMPENSATED"]},
    },
}
_event = {
    "type": "object",
    "required": ["seq", "time", "log_index", "dedup_id", "type", "accounts", "actor", "format", "prev_hash", "hash"],
    "properties": {
        "seq": {"type": "integer"},
        "time": _time_out,
        "log_index": {"type": "integer"},
        "dedup_id": {"type": ["string", "null"], "description": "null for an event no command caused (tcc_expired)"},
        "type": {"type": "string"},
        "accounts": {"type": "array", "items": _account_ref},
        "actor": {
            "type": ["object", "null"],
            "description": "who sent the command: the API key's id (never the key) and its role; null when no key was "
            "needed (loopback without keys), for an event no command caused, and for events of format 1",
            "required": ["key_id", "role"],
            "properties": {"key_id": {"type": "string"}, "role": {"type": "string", "enum": ["reader", "operator", "admin"]}},
        },
        "format": {"type": "integer", "description": "the format of the event's canonical bytes (1 or 2)"},
        "prev_hash": {"type": "string"},
        "hash": {"type": "string"},
    },
}
_transaction = {
    "type": "object",
    "required": ["txn_id", "state", "deadline", "legs", "decision", "seq"],
    "properties": {
        "txn_id": {"type": "string"},
        "state": {"type": ["string", "null"], "enum": ["TRIED", "CONFIRMED", "CANCELLED", None], "description": "null: no try here"},
        "deadline": {"type": ["string", "null"], "format": "date-time"},
        "legs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["account_id", "asset", "amount_out", "amount_in"],
                "properties": {
                    "account_id": {"type": "string"},
                    "asset": {"type": "string"},
                    "amount_out": {"type": "string"},
                    "amount_in": {"type": "string"},
                },
            },
        },
        "decision": {
            "type": ["object", "null"],
            "description": "the decision recorded here (this shard is the commit point), the first one written",
            "properties": {
                "commit": {"type": "boolean"},
                "participants": {"type": "array", "items": {"type": "integer"}},
                "reason_code": {"type": ["string", "null"]},
                "reason_message": {"type": "string"},
                "reason_account_id": {"type": ["string", "null"]},
                "time": {"type": "string", "format": "date-time"},
                "seq": {"type": "integer"},
            },
        },
        "seq": {"type": "integer", "description": "the shard's seq this view reflects"},
    },
}
_open_transactions = {
    "type": "object",
    "required": ["seq", "transactions"],
    "properties": {"seq": {"type": "integer"}, "transactions": {"type": "array", "items": {"type": "string"}}},
}
_accounts_as_of = {
    "type": "object",
    "required": ["seq", "accounts", "missing"],
    "properties": {
        "seq": {"type": "integer", "description": "every account is as of this seq"},
        "accounts": {"type": "object", "additionalProperties": _account_ref},
        "missing": {"type": "array", "items": {"type": "string"}, "description": "ids that did not exist at that seq"},
    },
}
_history_page = {
    "type": "object",
    "required": ["versions", "next"],
    "properties": {"versions": {"type": "array", "items": _account_ref}, "next": _next},
}
_events_page = {
    "type": "object",
    "required": ["events", "next"],
    "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "next": _next},
}
_statement_change = {
    "type": "object",
    "required": ["seq", "time", "type", "dedup_id", "version", "state", "available_delta", "available"],
    "properties": {
        "seq": {"type": "integer"},
        "time": _time_out,
        "type": {"type": "string", "description": "the event type"},
        "dedup_id": {"type": ["string", "null"]},
        "version": {"type": "integer"},
        "state": {"type": "string", "enum": ["NORMAL", "LOCKED", "DELETED"]},
        "available_delta": _amount_schema,
        "available": _amount_schema,
        "reservations": _money_map,
        "pending_in": _money_map,
        "pending_out": _money_map,
    },
}
_statement = {
    "type": "object",
    "required": ["account_id", "asset", "scale", "seq", "from_seq", "to_seq", "opening", "closing", "changes", "next"],
    "properties": {
        "account_id": {"type": "string"},
        "asset": {"type": "string"},
        "scale": {"type": "integer"},
        "seq": {"type": "integer", "description": "the last event seq the store held for this answer"},
        "from_seq": {"type": "integer", "description": "the period as seqs: first seq (inclusive)"},
        "to_seq": {"type": "integer", "description": "the period as seqs: end seq (exclusive)"},
        "opening": {"anyOf": [_account_ref, {"type": "null"}], "description": "as of just before the period"},
        "closing": {"anyOf": [_account_ref, {"type": "null"}], "description": "as of the period's end"},
        "changes": {"type": "array", "items": {"$ref": "#/components/schemas/StatementChange"}},
        "next": _next,
    },
}
_hierarchy_node = {
    "type": "object",
    "required": ["node_id", "parent_id", "children"],
    "properties": {
        "node_id": {"type": "string"},
        "parent_id": {"type": ["string", "null"]},
        "children": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "kind": {"type": "string", "enum": ["account", "node"]}},
            },
        },
    },
}
_per_asset = {"type": "object", "additionalProperties": _amount_schema, "description": "asset -> available balance"}
_hierarchy_balance = {
    "type": "object",
    "required": ["seq", "node_id", "available", "nodes"],
    "properties": {
        "seq": {"type": "integer"},
        "node_id": {"type": "string"},
        "available": _per_asset,
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "node_id": {"type": "string"},
                    "parent_id": {"type": ["string", "null"]},
                    "depth": {"type": "integer"},
                    "available": _per_asset,
                },
            },
        },
    },
}
_hierarchy_body = {
    "type": "object",
    "required": ["node_id", "children"],
    "additionalProperties": False,
    "properties": {
        "node_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "parent_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "children": {
            "type": "array",
            "maxItems": 10_000,
            "uniqueItems": True,
            "items": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
            "description": "account ids or node ids; the node's children become exactly these",
        },
    },
}
_ref_audit_head = {"$ref": "#/components/schemas/AuditHead"}
_audit_head = {
    "type": "object",
    "required": ["seq", "hash"],
    "properties": {"seq": {"type": "integer"}, "hash": {"type": "string"}, "log_index": {"type": "integer"}},
}

_account_search = {
    "type": "object",
    "required": ["seq", "accounts", "next"],
    "properties": {
        "seq": {"type": "integer", "description": "every account is as of this seq (on a sharded node: its shard's)"},
        "accounts": {"type": "array", "items": _account_ref, "description": "in account id order"},
        "next": {"type": ["string", "null"], "description": "pass as after= for the next page; null at the end"},
    },
}
_whoami = {
    "type": "object",
    "required": ["role", "key_id", "keys_required"],
    "properties": {
        "role": {"type": ["string", "null"], "enum": ["reader", "operator", "admin", None], "description": "null: no key, or not one of this node's"},
        "key_id": {"type": ["string", "null"], "description": "the key's public id, as events record it; null without a known key"},
        "keys_required": {"type": "boolean", "description": "false on a node without keys (loopback): every caller is admin"},
    },
}
_audit_verdict = {
    "type": "object",
    "required": ["ok", "from_seq", "seq", "hash", "head_seq", "events", "accounts", "accounts_compared", "first_bad_seq", "problem", "notes"],
    "properties": {
        "ok": {"type": "boolean"},
        "from_seq": {"type": "integer", "description": "the first stored event (above 1 on a node that started from a shared snapshot)"},
        "seq": {"type": "integer", "description": "the last event verified"},
        "hash": {"type": "string", "description": "its hash"},
        "head_seq": {"type": "integer", "description": "the chain head when the verification began"},
        "events": {"type": "integer"},
        "accounts": {"type": "integer", "description": "accounts folded from the events"},
        "accounts_compared": {"type": "integer", "description": "of those, compared with the live state (the others changed since)"},
        "first_bad_seq": {"type": ["integer", "null"]},
        "problem": {"type": ["string", "null"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "elapsed_ms": {"type": "integer"},
    },
}
_shards = {
    "type": "object",
    "required": ["map", "shards"],
    "properties": {
        "map": {"type": ["object", "null"], "description": "the versioned shard map; null on a node of one shard"},
        "shards": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["shard", "ready"],
                "properties": {
                    "shard": {"type": "integer"},
                    "url": {
                        "type": ["string", "null"],
                        "description": "the shard process's loopback URL; null: this process, or (hosted_here false) another node",
                    },
                    "hosted_here": {"type": "boolean", "description": "this node runs the shard's process (--host-shards)"},
                    "head": _ref_audit_head,
                    "ready": {"type": "boolean"},
                    "error": {"type": "string"},
                },
            },
        },
        "recovery_scans": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "the shards this router scans for cross-shard transactions left in doubt",
        },
        "router_id": {"type": "string", "description": "over a cluster: this router's key in the coffer-nodes bucket"},
        "routers": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "array", "items": {"type": "integer"}},
            "description": "over a cluster: the live routers and the shards each one's node runs; null: no fresh view (every shard is scanned)",
        },
    },
}

_described_errors = {
    401: "missing or unknown API key",
    403: "role not allowed",
    404: "unknown account (or hierarchy node)",
    409: "rejected by a ledger rule; nothing changed",
    413: "body too large",
    422: "malformed request; it never reached the log",
    503: "NOT_AVAILABLE: behind min_seq or at_seq, or the log is unreachable",
    507: "NOT_AVAILABLE: this node's disk is full (no Retry-After; nothing was stored; try another node)",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": _described_errors[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_and_msgpack(schema: dict[str, Any]) -> dict[str, Any]:
    """One schema in both encodings of POST /v1/commands."""
    return {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}}


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_id = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
_account_path = {"name": "account_id", "in": "path", "required": True, "schema": _id}
_node_path = {"name": "node_id", "in": "path", "required": True, "schema": _id}
_txn_path = {"name": "txn_id", "in": "path", "required": True, "schema": _id}
_seq = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_time = {"type": "string", "description": "RFC 3339 with a zone, or Unix epoch seconds"}
_limit = {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}
_cursor = {"type": "string", "maxLength": 200}

_min_seq = _query("min_seq", _seq, "wait for this seq (read your writes), else 503")
_at_seq = _query("at_seq", _seq, "as of this seq; not with at_time")
_at_time = _query("at_time", _time, "as of the last event with time <= at_time; not with at_seq")
_ranges = [
    _query("from_seq", _seq, "first seq (inclusive)"),
    _query("to_seq", _seq, "end seq (exclusive)"),
    _query("from_time", _time, "first time (inclusive)"),
    _query("to_time", _time, "end time (exclusive)"),
    _query("limit", _limit, "at most this many per page"),
    _query("cursor", _cursor, "the next of the previous page; the other parameters must be the same"),
    _min_seq,
]


def _read(role: str, summary: str, parameters: list[dict[str, Any]], answer: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "x-coffer-role": role,
            "parameters": parameters,
            "responses": {"200": _json(answer), **_errors(*errors)},
        }
    }


# The routes the query server (coffer query serve) answers, with the methods it answers them on.
query_server_routes = {
    "/v1/accounts": "get",
    "/v1/accounts/{account_id}": "get",
    "/v1/accounts/{account_id}/history": "get",
    "/v1/accounts/{account_id}/statement": "get",
    "/v1/events": "get",
    "/v1/audit/head": "get",
    "/v1/hierarchy/nodes": "post",
    "/v1/hierarchy/nodes/{node_id}": "get",
    "/v1/hierarchy/nodes/{node_id}/balance": "get",
    "/healthz": "get",
    "/readyz": "get",
    "/openapi.json": "get",
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The node's document (``GET /openapi.json`` of ``coffer serve``)."""
    structs = sorted({*(route.body_type for route in COMMAND_ROUTES), bodies.SweepBody}, key=lambda struct: struct.__name__)
    (_, *_), components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    # Amount fields are strings of a strict grammar: say so rather than a bare "string".
    for struct, schema in components.items():
        for name, prop in schema.get("properties", {}).items():
            if name in bodies.amount_fields:
                amount = _amount_ref(struct, name)
                if prop.get("type") == "string":
                    schema["properties"][name] = amount
                elif "anyOf" in prop:
                    prop["anyOf"] = [amount if option.get("type") == "string" else option for option in prop["anyOf"]]
    for (struct, name), note in _field_notes.items():
        components[struct]["properties"][name] = {**components[struct]["properties"][name], "description": note}
    components.update(
        {
            "PositiveAmount": positive_amount,
            "SignedNonZeroAmount": signed_nonzero_amount,
            "SignedAmount": signed_amount,
            "Account": _account,
            "Error": _error,
            "CommandResult": _command_result,
            "Event": _event,
            "AccountsAsOf": _accounts_as_of,
            "HistoryPage": _history_page,
            "EventsPage": _events_page,
            "Statement": _statement,
            "StatementChange": _statement_change,
            "HierarchyNodeBody": _hierarchy_body,
            "HierarchyNode": _hierarchy_node,
            "HierarchyBalance": _hierarchy_balance,
            "AuditHead": _audit_head,
            "Transaction": _transaction,
            "OpenTransactions": _open_transactions,
            "AccountSearch": _account_search,
            "Whoami": _whoami,
            "AuditVerdict": _audit_verdict,
            "Shards": _shards,
        }
    )

    def command(route: CommandRoute) -> dict[str, Any]:
        return post(route.summary, route.role.name.lower(), route.body_type.__name__, route.path_account)

    def post(summary: str, role: str, body: str, path_account: bool) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "x-coffer-role": role,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {"200": _json(_ref("CommandResult")), **_errors(401, 403, 409, 413, 422, 503, 507)},
        }
        if path_account:
            operation["parameters"] = [_account_path]
        return operation

    commands_item = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "enum": sorted(route.kind for route in COMMAND_ROUTES)}},
    }
    commands_body = {
        "type": "object",
        "required": ["commands"],
        "properties": {"commands": {"type": "array", "minItems": 1, "maxItems": 8190, "items": commands_item}},
    }
    commands_answer = {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "integer"}},
                    "description": "status, then a CommandResult's fields or an Error's",
                },
            }
        },
    }
    paths: dict[str, Any] = {
        "/v1/accounts": _read(
            "reader",
            "Many accounts, all as of one seq (the latest, at_seq, or the last event at or before at_time)",
            [_query("ids", {"type": "string"}, "comma-separated account ids", required=True), _at_seq, _at_time, _min_seq],
            _ref("AccountsAsOf"),
            401,
            403,
            422,
            503,
        ),
        "/v1/accounts/{account_id}": _read(
            "reader",
            "One account with all sections: the latest, or as of at_seq or at_time (404 if it did not exist then)",
            [_account_path, _at_seq, _at_time, _min_seq],
            _account_ref,
            401,
            403,
            404,
            422,
            503,
        ),
        "/v1/accounts/{account_id}/history": _read(
            "reader",
            "Every version of an account, oldest first, paged",
            [_account_path, *_ranges],
            _ref("HistoryPage"),
            401,
            403,
            404,
            422,
            503,
        ),
        "/v1/accounts/{account_id}/statement": _read(
            "reader",
            "Statement for a period: opening balance, every change, closing balance; changes paged",
            [_account_path, *_ranges],
            _ref("Statement"),
            401,
            403,
            404,
            422,
            503,
        ),
    }
    # The command routes, from the table: after the account reads, the POST before the GET of a path.
    for path, route in routes_by_path.items():
        paths[path] = {"post": command(route), **paths.get(path, {})}
    # Not a command of the core: the sharded router's sweep of a striped account (coffer.txn.stripes).
    sweep_summary = "Sharded nodes: move every stripe's available of a striped account to an ordinary account, in one transaction"
    paths["/v1/accounts/{account_id}/sweep"] = {"post": post(sweep_summary, "operator", "SweepBody", True)}
    paths |= {
        "/v1/commands": {
            "post": {
                "summary": "Up to 8190 commands in one request, each answered on its own",
                "description": (
                    "Each item is `{\"type\": T, …}` with T one of "
                    + ", ".join(f"`{kind}`" for kind in sorted(route.kind for route in COMMAND_ROUTES))
                    + ", and the fields of T's own endpoint, its dedup_id included (a path parameter becomes"
                    " the field `account_id`). The answer has one result per command, in order, each"
                    " `{\"status\": 200 | 409 | 422 | 403, …the body T's endpoint would answer}`; each command is"
                    " independent, and a malformed one gets its own 422. More than 8190 is a 422 for the whole"
                    " request. The admin command types need the admin role."
                    " The body may also be MessagePack (`Content-Type: application/msgpack`): the same fields,"
                    " amounts as decimal strings, map keys only strings and never repeated, the same depth"
                    " bound, only values JSON has (no binary, extension or timestamp values, no NaN), else 422."
                    " The answer, errors included, is MessagePack when the request is or when `Accept` names"
                    " `application/msgpack`."
                ),
                "x-coffer-role": "operator",
                "requestBody": {"required": True, "content": _json_and_msgpack(commands_body)},
                "responses": {
                    "200": {"description": "OK", "content": _json_and_msgpack(commands_answer)},
                    **_errors(401, 403, 413, 422, 503, 507),
                },
            }
        },
        "/v1/events": _read(
            "reader", "Events by seq and time range, oldest first, paged", _ranges, _ref("EventsPage"), 401, 403, 422, 503
        ),
        "/v1/events/stream": {
            "get": {
                "summary": "The event feed: JSON lines, one event a line with its canonical bytes (base64), then new ones as they come",
                "x-coffer-role": "reader",
                "parameters": [_query("from_seq", _seq)],
                "responses": {
                    "200": {"description": "application/x-ndjson, heartbeats between events"},
                    **_errors(401, 403, 422),
                },
            }
        },
        "/v1/audit/head": _read("reader", "The chain head", [], _ref("AuditHead"), 401, 403),
        "/v1/search/accounts": _read(
            "reader",
            "Find accounts by id prefix: a page of the accounts whose id starts with it, in id order",
            [
                _query("prefix", {"type": "string", "pattern": "^[A-Za-z0-9._:-]{0,128}$"}, "the start of the ids; empty: every account"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "at most this many"),
                _query("after", {"type": "string", "pattern": "^[A-Za-z0-9._:-]{0,128}$"}, "the next of the previous page"),
                _min_seq,
            ],
            _ref("AccountSearch"),
            401,
            403,
            422,
            503,
        ),
        "/v1/whoami": _read("none", "The role and key id of the API key sent (no role for a missing or unknown key)", [], _ref("Whoami")),
        "/v1/audit/verify": _read(
            "reader",
            "Re-verify this node's stored chain: every hash, seq and link up to the head, and the accounts the events fold to against the live ones",
            [],
            _ref("AuditVerdict"),
            401,
            403,
            503,
        ),
        "/v1/shards": _read(
            "reader",
            "The shard map and each shard's chain head and readiness (one shard on a node that is not sharded)",
            [],
            _ref("Shards"),
            401,
            403,
        ),
        "/v1/transactions": _read(
            "reader",
            "Two-phase tries still open on this shard, oldest first (where a recovery task looks for transactions in doubt)",
            [
                _query("open", {"type": "boolean"}, "must be true: only open tries are listed", required=True),
                _query("prefix", {"type": "string", "maxLength": 128}, "only ids that start with this"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
            ],
            _ref("OpenTransactions"),
            401,
            403,
            422,
        ),
        "/v1/transactions/{txn_id}": _read(
            "reader",
            "A two-phase transaction as this shard holds it: its try (state, legs, deadline) and, at a commit point, its decision",
            [_txn_path, _min_seq],
            _ref("Transaction"),
            401,
            403,
            404,
            422,
            503,
        ),
        "/v1/hierarchy/nodes": {
            "post": {
                "summary": "Create or replace a hierarchy node (its children become exactly the given ones)",
                "x-coffer-role": "admin",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("HierarchyNodeBody")}}},
                "responses": {"200": _json(_ref("HierarchyNode")), **_errors(401, 403, 409, 413, 422)},
            }
        },
        "/v1/hierarchy/nodes/{node_id}": _read(
            "reader", "A hierarchy node: its parent and children", [_node_path], _ref("HierarchyNode"), 401, 403, 404
        ),
        "/v1/hierarchy/nodes/{node_id}/balance": _read(
            "reader",
            "Available balance per asset of a node (sum over its subtree) and, unless root_only, of every node below it",
            [
                _node_path,
                _query("root_only", {"type": "boolean", "default": False}, "only the node itself"),
                _query("at_seq", _seq, "as of this seq"),
            ],
            _ref("HierarchyBalance"),
            401,
            403,
            404,
            422,
            503,
        ),
        "/healthz": {"get": {"summary": "Liveness", "x-coffer-role": "none", "responses": {"200": _json({"type": "object"})}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 says what the node waits for (waiting_for), e.g. replaying log 120000/200000",
                "x-coffer-role": "none",
                "responses": {"200": _json({"type": "object"}), **_errors(503)},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "x-coffer-role": "none",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "x-coffer-role": "reader",
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        "/admin/log-level": {
            "put": {
                "summary": "Change the log level",
                "x-coffer-role": "admin",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"level": {"type": "string"}}}}},
                },
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 422)},
            }
        },
    }
    paths.update(flow_paths())
    components.update(flow_components())
    paths.update(webhook_paths())
    components.update(webhook_components())
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


@functools.cache
def query_openapi_document() -> dict[str, Any]:
    """The query server's document: the node's read routes and the hierarchy, from the same declarations."""
    node = openapi_document()
    paths = {path: {method: node["paths"][path][method]} for path, method in query_server_routes.items()}
    return {
        **node,
        "info": {
            "title": "Coffer query server",
            "version": __version__,
            "description": "History, balances in the past, statements and the account hierarchy, from the SQL store.",
        },
        "paths": paths,
    }
