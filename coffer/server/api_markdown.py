"""docs/api.md, the HTTP contract in prose and tables, generated from the OpenAPI document.

Job: one contract, kept in the project, that cannot drift from what the servers do. Routes,
parameters, bodies, answers, roles and schemas come from :func:`coffer.server.openapi.openapi_document`
(itself built from the structs that decode requests); the rules no schema can carry — status
codes, error codes, amounts, times, pagination, consistency, keys — are written once here, with
every number read from the constant that enforces it. ``coffer openapi --markdown`` prints the
result; a test fails when docs/api.md is not exactly that.
"""

from typing import Any

from coffer.core import commands
from coffer.core.amounts import amount_max, scale_max
from coffer.core.errors import ErrorCode
from coffer.flows import definition, expressions
from coffer.http import limits
from coffer.notify import notifier
from coffer.query import reads
from coffer.server import openapi

_methods = ("get", "post", "put", "delete")

# What each code means; a test checks that every ErrorCode is here.
error_meanings: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.ACCOUNT_NOT_FOUND: (409, "a command names an unknown account (404 on a GET of one account or hierarchy node)"),
    ErrorCode.ACCOUNT_EXISTS: (409, "the id is taken, also by a deleted account"),
    ErrorCode.ACCOUNT_LOCKED: (409, "balance operations on a locked account"),
    ErrorCode.ACCOUNT_DELETED: (409, "the account is deleted, for good"),
    ErrorCode.ACCOUNT_NOT_EMPTY: (409, "delete of an account that still holds money, reservations or pending entries"),
    ErrorCode.INVALID_STATE_TRANSITION: (409, "lock of a locked account, unlock of a normal one, …"),
    ErrorCode.ASSET_MISMATCH: (409, "the command's asset is not the account's"),
    ErrorCode.SAME_ACCOUNT: (409, "a transfer from an account to itself"),
    ErrorCode.LOWER_LIMIT_EXCEEDED: (409, "available would go below the lower limit"),
    ErrorCode.UPPER_LIMIT_EXCEEDED: (409, "available + reserved + pending would go above the upper limit"),
    ErrorCode.PRECONDITION_FAILED: (409, "an expected balance, bound or version did not hold"),
    ErrorCode.RESERVATION_NOT_FOUND: (409, "unknown reservation id"),
    ErrorCode.INSUFFICIENT_RESERVATION: (409, "release of more than is reserved"),
    ErrorCode.TXN_EXISTS: (409, "a TCC try with a txn_id already used"),
    ErrorCode.TXN_NOT_FOUND: (409, "confirm or cancel of an unknown txn_id"),
    ErrorCode.TXN_ALREADY_CONFIRMED: (409, "cancel of a confirmed transaction"),
    ErrorCode.TXN_ALREADY_CANCELLED: (409, "confirm of a cancelled transaction"),
    ErrorCode.ORIGINAL_NOT_COMPENSABLE: (409, "the original command is of a type that cannot be compensated"),
    ErrorCode.ALREADY_COMPENSATED: (409, "an original arriving after its compensation, or a second compensation"),
    ErrorCode.DEDUP_ID_REUSED: (409, "the dedup_id was used with another payload"),
    ErrorCode.VELOCITY_LIMIT_EXCEEDED: (
        409,
        "a debit would pass one of the account's velocity caps (money or debits per UTC hour or day, by log time)",
    ),
    ErrorCode.FLOW_NOT_FOUND: (404, "no flow (or no such version of it) by that name; 409 when the log finds it missing"),
    ErrorCode.FLOW_RUN_NOT_FOUND: (404, "no flow run by that id"),
    ErrorCode.FLOW_INVALID: (422, "a flow definition that does not validate; the message says where and why"),
    ErrorCode.FLOW_CHECK_FAILED: (422, "a run's params fail one of the flow's own checks; nothing was recorded"),
    ErrorCode.WEBHOOK_NOT_FOUND: (404, "no webhook subscription by that id on this node"),
    ErrorCode.TXN_ABORTED: (409, "a cross-shard transaction was aborted by recovery: a participant stayed in doubt too long"),
    ErrorCode.TXN_ALREADY_DECIDED: (409, "a cross-shard transaction's commit point already holds the other decision"),
    ErrorCode.STRIPED_ACCOUNT: (
        422,
        "a striped account takes credits only: no debit, hold, two-phase leg, limit, lock or precondition; sweep moves its money out",
    ),
    ErrorCode.INVALID_AMOUNT: (422, "an amount outside the grammar, the scale or the bounds below"),
    ErrorCode.BALANCE_OUT_OF_RANGE: (
        409,
        "a balance (available + reserved + pending) would pass 2^127 - 1 minor units on an account with no upper limit",
    ),
    ErrorCode.INVALID_REQUEST: (422, "anything else malformed: schema, ids, parameters, cursors (413 for a body too large)"),
    ErrorCode.NOT_AVAILABLE: (503, "not applied or stored that far yet, or the log is unreachable; retry"),
    ErrorCode.UNAUTHORIZED: (401, "missing or unknown API key"),
    ErrorCode.FORBIDDEN: (403, "the key's role may not use the route"),
}


def _prose() -> str:
    codes = "\n".join(
        f"| `{code.value}` | {status} | {meaning} |" for code, (status, meaning) in error_meanings.items()
    )
    reserved = ", ".join(f"`{prefix}`" for prefix in commands.reserved_id_prefixes)
    reserved_accounts = ", ".join(f"`{prefix}`" for prefix in commands.reserved_account_id_prefixes)
    return f"""# Coffer HTTP API v1

JSON over HTTP. This file is generated from the OpenAPI document that every node serves at
`GET /openapi.json` (the query server, `coffer query serve`, serves its own subset at the same
path): `coffer openapi --markdown > docs/api.md`. A test fails when the two disagree.

## Status codes

| code | meaning |
|---|---|
| 200 | done: the command was applied (or a retry of its `dedup_id` answers the original outcome), or the read is answered |
| 401 | missing or unknown API key (`UNAUTHORIZED`) |
| 403 | the key's role may not use this route (`FORBIDDEN`) |
| 404 | a GET of an unknown account or hierarchy node (`ACCOUNT_NOT_FOUND`), or of an account as of a time or seq before it existed |
| 409 | a ledger rule rejected the command; nothing changed. A retry of the same `dedup_id` answers the same 409 |
| 413 | the body is larger than {limits.request_bytes_max // (1024 * 1024)} MiB |
| 422 | malformed request (schema, amount, id, parameter, cursor); it never reaches the log and does not use up its `dedup_id` |
| 503 | `NOT_AVAILABLE`: not applied (or stored) that far yet, or the log is unreachable; has `Retry-After`. Retrying a command with the same `dedup_id` is safe |

Every error has the body `{{"error": {{"code": "LOWER_LIMIT_EXCEEDED", "message": "…", "account_id": "…"}}}}`
(`account_id` only where one account is at fault). Codes are stable, upper snake case:

| code | usual status | when |
|---|---|---|
{codes}

## Amounts

Amounts are JSON **strings** of decimal digits in the asset's scale (0 to {scale_max} digits after
the point); answers always print the full scale (`"10.50"` at scale 2). Inside, they are exact
integers of the asset's minor unit, at most {amount_max} minor units (2^127 - 1) in magnitude, and so
is every balance; nothing is ever rounded. A command that would take a balance beyond that bound is
`409 BALANCE_OUT_OF_RANGE`. A command naming an account the ledger does not have goes to the log
and is rejected there (`409 ACCOUNT_NOT_FOUND`), for good: a retry of its `dedup_id` answers the
same, also after the account was created. Three schemas, by where the amount stands:

| schema | grammar | where |
|---|---|---|
| `PositiveAmount` | `{openapi.unsigned_amount_pattern}`, not zero | `amount` of a transfer, a reservation, a release |
| `SignedNonZeroAmount` | `{openapi.signed_amount_pattern}`, not zero | `amount` of a leg (batch operations, TCC tries): negative takes money out |
| `SignedAmount` | `{openapi.signed_amount_pattern}` | limits, expected balances, bounds, and every balance in answers; `"-0"` means 0 |

`"10"` and `"10.5"` mean 10.00 and 10.50 at scale 2. More decimals than the asset's scale, more than
{openapi.amount_digits_max} digits, a magnitude beyond the bound, JSON numbers, exponents, `NaN`,
`+5`, `.5` and spaces are `422 INVALID_AMOUNT`.

## Times

Times are answered as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.250Z`), the log time of
the event. Time parameters take RFC 3339 with a date, a time and a zone, or Unix epoch seconds
(`1738324800` or `1738324800.25`). Event times never go back, so a time names a point in the
history: `at_time=T` is the state after the last event with time <= T; `from_time` is inclusive
and `to_time` exclusive. A time between two milliseconds rounds so that the comparison means the
same as on the exact time.

## Ranges, pages and cursors

Ranges are half-open: `from_seq`/`from_time` inclusive, `to_seq`/`to_time` exclusive. `limit`
defaults to {reads.query_limit_default}, at most {reads.query_limit_max}. Paged answers (`GET /v1/events`,
`GET /v1/accounts/{{id}}/history`, `GET /v1/accounts/{{id}}/statement`) carry `next`: an opaque
string to pass as `cursor=` with the same other parameters for the next page, or null at the end
(of what is stored now: later events come with a later request). `limit` may change between
pages; any other parameter may not: a cursor of another route, account or filter set is `422
INVALID_REQUEST`. A cursor is a position, not a credential, and works on the node and the query
server alike. `from_seq`/`limit` paging without a cursor works as before.

## Consistency

`seq` is the number of the last event (per shard, gapless) that an answer reflects. A read may pass
`min_seq=N` (read your writes): a node that has not applied N waits briefly, then answers `503
NOT_AVAILABLE` instead of older data. `at_seq=N` reads every account as of one seq (a consistent
snapshot); `at_seq` and `at_time` together are `422`. History reads (`at_seq`, `at_time`, history,
statements, events) come from the node's event store, or on the query server from its SQL store,
whose answers say which `seq` they hold.

## Keys and roles

Keys: `COFFER_API_KEYS="admin:KEY,operator:KEY,reader:KEY"` or `--keys-file` (lines of
`ROLE sha256:HASH`, written by `coffer keys add`; a node re-reads the file when it changes); send one as `X-API-Key: KEY` or `Authorization: Bearer KEY`. Roles are ordered: `reader` reads,
`operator` also moves money, `admin` also manages accounts, the hierarchy and the log level. A node
bound to loopback without keys treats every caller as admin; binding anything else without keys is
refused, and so is binding it without TLS (`--tls-cert`/`--tls-key`: the API over HTTPS) unless
the node is told `--insecure-allow-plaintext`. `/healthz`, `/readyz` and `/openapi.json` need no key.

## Limits

| what | limit |
|---|---|
| request body | {limits.request_bytes_max // (1024 * 1024)} MiB (413 beyond) |
| commands in one `POST /v1/commands` | 1 to {limits.commands_per_request_max} |
| accounts in one `GET /v1/accounts?ids=` | {reads.query_limit_max} |
| items per page (`limit`) | {reads.query_limit_max} |
| ids (accounts, reservations, transactions, hierarchy nodes) | 1 to 128 characters of `A-Za-z0-9._:-` |
| a flow definition | {commands.flow_definition_bytes_max // 1024} KiB canonical; {definition.steps_max} steps, {definition.params_max} params, {definition.computed_max} computed values, {definition.checks_max} checks, {definition.flow_legs_max} legs a command, expressions of {expressions.expression_length_max} characters |
| a run's params | {commands.flow_params_bytes_max // 1024} KiB |

## Flows

A flow is a named, versioned definition (data, not code: typed params, computed values in an exact
expression language with named rounding, checks, and the commands it produces, atomic or as a
saga); `docs/flows.md` describes the format and the shipped library. `PUT /v1/flows/{{name}}`
registers the next version through the log, so every replica holds the same registry; a run
(`POST /v1/flows/{{name}}/runs`) is exactly-once by its `dedup_id` (the run's id): its start and
its outcome are recorded in the ledger, and every command it sends has a `dedup_id` derived from
the run's (`fl:<run_id>:<step>`, or `fh:<hash>:<step>` for a long id), so a retry or a resumed
run replays instead of applying again.

## Reserved ids

Flow runs, cross-shard transactions and striped accounts derive the ids of the commands they send
from the caller's (`fl:` and `fh:` for a run's steps, `cx:` for a transaction's id and its steps,
`st:` for the steps that create a striped account's stripes), so those belong to them: a
`dedup_id` (of a command, a `/v1/commands` item, a flow run or a flow registration) or a `txn_id`
(also one a flow makes from its params) starting with {reserved} is `422 INVALID_REQUEST` on a
single node and on a sharded one. Naming such an id is fine where it is read, e.g. as the
`original_dedup_id` of a compensation. An `account_id` starting with {reserved_accounts} is a
stripe's (see Striped accounts): a command that names one is `422 INVALID_REQUEST`; reading one is
fine.

## Velocity limits

`POST /v1/accounts/{{account_id}}/velocity-limits` sets (replaces) an account's caps on the money
and the number of debits leaving it per UTC hour and per UTC day, by log time. A debit is a
transfer out, the net decrease a batch operation makes on the account, or a TCC hold out (given
back if the try is cancelled or expires within the same window); reservations, confirms, cancels
and compensations are not debits. A debit past a cap is `409 VELOCITY_LIMIT_EXCEEDED`, checked with
the movement after the balance limits; usage counts from when caps were set, and `GET
/v1/accounts/{{account_id}}` shows the caps and the current usage under `velocity`.

## Striped accounts

On a sharded node (`coffer serve --shards N`) an account that receives a large share of all
transfers can be created with `"stripes": K` (2 to {commands.stripes_max}): its credits then land
on K stripe accounts on different shards, so they spread over K shards' logs instead of one. On a
single node `stripes` is `422 INVALID_REQUEST` (one ledger has one log to spread over). A striped
account is credit-only:

* a transfer to it goes to its stripe on the paying account's shard (one shard, no two-phase
  commit), else to the stripe its `dedup_id` picks, so a retry reaches the same stripe; the answer
  shows the stripe that took the credit. A batch operation's credit to it is placed the same way;
* a transfer or batch leg from it, a reservation, release or TCC leg on it, a precondition or
  expected balance on it, limits (at creation too), velocity caps, lock, unlock and delete are
  `422 STRIPED_ACCOUNT`;
* `POST /v1/accounts/{{account_id}}/sweep` with `{{"dedup_id", "to_account_id"}}` moves every
  stripe's available to an ordinary account in one cross-shard transaction (all or nothing); the
  answer is a cross-shard command's (`txn_id`, `shard_seqs`, `token`) with `swept`, the amount
  moved (`"0"` when the stripes were empty). A retry with the same `dedup_id` answers the same and
  moves nothing again; one arriving while the first attempt is still in flight is `503`, retry.

`GET /v1/accounts/{{account_id}}` (and `?ids=`) answers one balance: the money sections are the
stripes' sums, `upper_limit` is null, `stripes` lists each stripe's id, shard and available, and
`stripe_seqs` the seq each of their shards answered; `at_seq` is `422` for a striped account (it
is per shard: use `at_time` or `token`). Stripes' ids start with {reserved_accounts}: they can be read but
not named in a command. The account's own record (its id, on its own shard) holds the definition in
its metadata and limits 0 and 0, so no money ever rests on it.

## Webhooks

`POST /v1/webhooks` subscribes a URL to the events of this node's history: those touching given
accounts, of given types, or crossing a balance threshold of one account (`below`: available
goes from at least the amount to less; `above`: the other way). Each wanted event is posted as
`{{"subscription_id", "delivery_id", "shard", "event"}}` (the event as `GET /v1/events` shows it),
in seq order per shard, at least once: a failed or timed-out post is retried with exponential backoff
({notifier.backoff_s} s doubling up to {notifier.backoff_s_max:.0f} s) before the next event, and the subscription's
cursor moves on disk only after a 2xx, so a restart delivers again rather than skips. Bodies are
signed: `X-Coffer-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`, with
the secret answered once at creation; `X-Coffer-Delivery` (`<subscription>:<shard>:<seq>`) is the
same on every attempt. Delivery follows the event store, never the write path. Every attempt is in `GET
/v1/webhooks/{{id}}/deliveries`; `POST /v1/webhooks/{{id}}/replay` delivers again from a seq.
Subscriptions belong to the node they were made on; a sharded node's router follows every shard,
with a cursor per shard (`cursors`; a replay names its `shard`). `COFFER_WEBHOOK_HOSTS` (comma-separated
host names; `*`, the default, for any) limits where a node may post.
"""


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return None if ref is None else str(ref).rsplit("/", 1)[1]


def _type_text(schema: dict[str, Any]) -> str:
    name = _ref_name(schema)
    if name is not None:
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type_text(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        return f"array of {_type_text(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {_type_text(schema['additionalProperties'])}"
    return str(kind)


def _rules(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return "; ".join(filter(None, (_rules(option) for option in schema["anyOf"] if "$ref" not in option)))
    parts = []
    for key, label in (
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minimum", ">="),
        ("maximum", "<="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if "not" in schema and "pattern" in schema["not"]:
        parts.append(f"not `{schema['not']['pattern']}`")
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default `{schema['default']}`")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| field | type | required | rules | description |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        description = prop.get("description", "")
        lines.append(
            f"| `{name}` | {_cell(_type_text(prop))} | {'yes' if name in required else ''} | "
            f"{_cell(_rules(prop))} | {_cell(description)} |"
        )
    return lines


def _route(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### {method.upper()} {path}", "", operation.get("summary", ""), ""]
    if operation.get("description"):
        lines += [operation["description"], ""]
    role = operation.get("x-coffer-role", "reader")
    lines.append(f"Role: {'none (no key needed)' if role == 'none' else f'`{role}`'}.")
    lines.append("")
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | rules | description |", "|---|---|---|---|---|---|"]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {_cell(_type_text(schema))} | "
                f"{'yes' if parameter.get('required') else ''} | {_cell(_rules(schema))} | "
                f"{_cell(parameter.get('description') or schema.get('description', ''))} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body is not None:
        schema = body["content"]["application/json"]["schema"]
        name = _ref_name(schema)
        also = "".join(f" Also as `{media_type}`." for media_type in body["content"] if media_type != "application/json")
        if name is not None:
            lines.append(f"Body: {_type_text(schema)}.{also}")
        else:
            lines.append(f"Body:{also}")
            lines.append("")
            lines += _fields(schema)
        lines.append("")
    lines += ["| answer | body | when |", "|---|---|---|"]
    for status, response in operation.get("responses", {}).items():
        content = response.get("content", {}).get("application/json")
        body_text = _type_text(content["schema"]) if content is not None else "see description"
        lines.append(f"| {status} | {_cell(body_text)} | {_cell(response.get('description', ''))} |")
    lines.append("")
    return lines


def markdown(document: dict[str, Any] | None = None) -> str:
    """docs/api.md for ``document`` (the node's OpenAPI document by default)."""
    document = document or openapi.openapi_document()
    query_routes = openapi.query_server_routes
    lines = [_prose(), "## Routes", ""]
    lines += ["| method | path | role | also on the query server | summary |", "|---|---|---|---|---|"]
    operations = []
    for path, item in document["paths"].items():
        for method in _methods:
            operation = item.get(method)
            if operation is None:
                continue
            operations.append((path, method, operation))
            on_query = "yes" if query_routes.get(path) == method else ""
            lines.append(
                f"| {method.upper()} | `{path}` | {operation.get('x-coffer-role', '')} | {on_query} | "
                f"{_cell(operation.get('summary', ''))} |"
            )
    lines.append("")
    for path, method, operation in operations:
        lines += _route(path, method, operation)
    lines += ["## Schemas", ""]
    for name, schema in sorted(document["components"]["schemas"].items()):
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [schema["description"], ""]
        if "properties" in schema:
            lines += _fields(schema)
        else:
            rules = _rules(schema)
            lines.append(f"{_type_text(schema)}" + (f"; {rules}" if rules else "") + ".")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
