"""The webhooks' part of the node's OpenAPI document (merged by :mod:`coffer.server.openapi`)."""

from typing import Any

import msgspec

from coffer.notify.http import ReplayBody, SubscriptionBody

_statuses = {
    401: "missing or unknown API key",
    403: "role not allowed",
    404: "WEBHOOK_NOT_FOUND",
    422: "malformed request",
}
_id_path = {"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^wh-[0-9a-f]{16}$"}}
_webhook = {
    "type": "object",
    "required": ["id", "url", "timeout_ms", "cursor_seq"],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "secret": {"type": "string", "description": "only in the answer to POST: the HMAC-SHA256 key of X-Coffer-Signature"},
        "account_ids": {"type": "array", "items": {"type": "string"}},
        "event_types": {"type": "array", "items": {"type": "string"}},
        "threshold": {"type": ["object", "null"]},
        "timeout_ms": {"type": "integer"},
        "created_ms": {"type": "integer"},
        "cursor_seq": {"type": ["integer", "null"], "description": "one shard: the last seq settled (delivered or not wanted)"},
        "cursors": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "per shard: the last seq settled"},
    },
}
_delivery = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "shard": {"type": "integer"},
        "seq": {"type": "integer"},
        "attempt": {"type": "integer"},
        "outcome": {"type": "string", "enum": ["delivered", "failed"]},
        "http_status": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "time_ms": {"type": "integer"},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {str(status): {"description": _statuses[status], "content": {"application/json": {"schema": schema}}} for status in statuses}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def webhook_components() -> dict[str, Any]:
    (_, _), components = msgspec.json.schema_components([SubscriptionBody, ReplayBody], ref_template="#/components/schemas/{name}")
    components["ThresholdBody"]["properties"]["amount"] = {"$ref": "#/components/schemas/SignedAmount"}
    components.update({"Webhook": _webhook, "WebhookDelivery": _delivery})
    return components


def webhook_paths() -> dict[str, Any]:
    webhook = {"$ref": "#/components/schemas/Webhook"}
    return {
        "/v1/webhooks": {
            "post": {
                "summary": "Subscribe a URL to events (by account, by type, or a balance threshold crossing); signed, at least once, in seq order",
                "x-coffer-role": "admin",
                "requestBody": _body("SubscriptionBody"),
                "responses": {"200": _json(webhook), **_errors(401, 403, 422)},
            },
            "get": {
                "summary": "This node's webhook subscriptions",
                "x-coffer-role": "reader",
                "responses": {"200": _json({"type": "object", "properties": {"webhooks": {"type": "array", "items": webhook}}}), **_errors(401, 403)},
            },
        },
        "/v1/webhooks/{subscription_id}": {
            "get": {
                "summary": "A webhook subscription and its cursor",
                "x-coffer-role": "reader",
                "parameters": [_id_path],
                "responses": {"200": _json(webhook), **_errors(401, 403, 404)},
            },
            "delete": {
                "summary": "Unsubscribe",
                "x-coffer-role": "admin",
                "parameters": [_id_path],
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 404)},
            },
        },
        "/v1/webhooks/{subscription_id}/deliveries": {
            "get": {
                "summary": "The delivery log: every attempt with its outcome, newest first",
                "x-coffer-role": "reader",
                "parameters": [
                    _id_path,
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "before_id", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {"deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookDelivery"}}}}),
                    **_errors(401, 403, 422),
                },
            }
        },
        "/v1/webhooks/{subscription_id}/replay": {
            "post": {
                "summary": "Deliver again from a seq on",
                "x-coffer-role": "admin",
                "parameters": [_id_path],
                "requestBody": _body("ReplayBody"),
                "responses": {"200": _json(webhook), **_errors(401, 403, 404, 422)},
            }
        },
    }
