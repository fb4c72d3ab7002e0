"""The hierarchy routes' work, shared by the query server and the node.

Job: ``POST /v1/hierarchy/nodes`` (create or replace a node), ``GET /v1/hierarchy/nodes/{id}``
and ``GET /v1/hierarchy/nodes/{id}/balance?root_only=&at_seq=`` over any backend that keeps the
hierarchy rows and knows the accounts and their balances at a seq: the query server's SQL store,
or a node's own event store (:mod:`coffer.server.node_reads`).

Method: the body is decoded strictly and checked here (422); the rules of the tree are
:func:`coffer.query.hierarchy.plan_change`, run inside the backend's write transaction (409);
sums are :func:`coffer.query.hierarchy.subtree_balances`. Every function is blocking: callers run
it in a worker thread.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from coffer.core.errors import ErrorCode
from coffer.http import inputs
from coffer.query import hierarchy
from coffer.query.reads import ReadError
from coffer.query.sql_store import ChildRow

id_pattern = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class HierarchyBackend(Protocol):
    def hierarchy_rows(self) -> tuple[list[str], list[ChildRow]]: ...

    def change_hierarchy(self, change: Callable[[list[str], list[ChildRow]], tuple[list[str], list[ChildRow]]]) -> None: ...

    def known_accounts(self, account_ids: Sequence[str]) -> set[str]: ...

    def available_at(self, account_ids: Sequence[str], seq: int) -> dict[str, tuple[str, int, int]]: ...


class NodeBody(msgspec.Struct, forbid_unknown_fields=True):
    node_id: str
    children: list[str]
    parent_id: str | None = None


_node_decoder = msgspec.json.Decoder(NodeBody)


def _checked_id(value: str, name: str) -> str:
    if not id_pattern.fullmatch(value) or value in inputs.reserved_ids:
        raise ReadError(422, ErrorCode.INVALID_REQUEST, f"{name} must be 1-128 characters of A-Za-z0-9._:-")
    return value


def decode_node(data: bytes) -> NodeBody:
    """The body of POST /v1/hierarchy/nodes, checked; ReadError 422 otherwise."""
    try:
        # Valid UTF-8, no repeated keys, bounded nesting: one reading of the body, the same everywhere.
        body = inputs.decode_json(data, _node_decoder.decode)
    except msgspec.ValidationError as error:
        raise ReadError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
    except inputs.InputError as error:
        raise ReadError(422, ErrorCode.INVALID_REQUEST, error.message) from None
    _checked_id(body.node_id, "node_id")
    if body.parent_id is not None:
        _checked_id(body.parent_id, "parent_id")
    for child_id in body.children:
        _checked_id(child_id, "each child")
    if len(body.children) > hierarchy.children_per_node_max:
        raise ReadError(422, ErrorCode.INVALID_REQUEST, f"a node has at most {hierarchy.children_per_node_max} children")
    if len(set(body.children)) != len(body.children):
        raise ReadError(422, ErrorCode.INVALID_REQUEST, "children lists an id twice")
    return body


def forest(backend: HierarchyBackend) -> hierarchy.Forest:
    nodes, rows = backend.hierarchy_rows()
    return hierarchy.Forest.from_rows(nodes, rows)


def node_view(found: hierarchy.Forest, node_id: str) -> dict[str, Any]:
    """A node with its parent and its children in order; ReadError 404 for an unknown node."""
    if node_id not in found.children:
        raise ReadError(404, ErrorCode.ACCOUNT_NOT_FOUND, f"hierarchy node {node_id} not found", node_id)
    return {
        "node_id": node_id,
        "parent_id": found.parent_of(node_id),
        "children": [{"id": child_id, "kind": kind} for child_id, kind in found.children[node_id]],
    }


def put_node(backend: HierarchyBackend, body: NodeBody) -> dict[str, Any]:
    """Create or replace a node (HierarchyError for a change the rules refuse); answer its view."""
    known = backend.known_accounts([body.node_id, *body.children])

    def change(nodes: list[str], rows: list[ChildRow]) -> tuple[list[str], list[ChildRow]]:
        return hierarchy.plan_change(hierarchy.Forest.from_rows(nodes, rows), body.node_id, body.parent_id, body.children, known)

    backend.change_hierarchy(change)
    return node_view(forest(backend), body.node_id)


def node_balance(backend: HierarchyBackend, node_id: str, root_only: bool, seq: int) -> dict[str, Any]:
    """The node's available balance per asset at ``seq`` and, unless ``root_only``, every node's below it."""
    found = forest(backend)
    node_view(found, node_id)  # 404 for an unknown node
    available = backend.available_at(found.accounts_under(node_id), seq)
    balances, nodes = hierarchy.subtree_balances(found, node_id, available, root_only)
    return {"seq": seq, "node_id": node_id, "available": balances, "nodes": nodes}
