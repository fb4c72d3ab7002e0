"""The account hierarchy: a forest of nodes over leaf accounts, and its balances at a seq.

Job: validate changes to the hierarchy and sum balances over it. Money only ever moves on leaf
accounts; a node's available balance, per asset, is the sum over every account in its subtree.

Rules (checked on every change, against the state inside the same write transaction):
- a node's children are accounts known to the store, or existing nodes; unknown children are
  rejected (``ACCOUNT_NOT_FOUND``, naming the child);
- a node id is not an account id (a child id must name one thing);
- it is a tree: an account or a node has at most one parent (a second parent would count its
  money twice in a common ancestor), and no node is its own ancestor (``INVALID_REQUEST``).

A change creates or replaces one node: its children become exactly the given list (a child node
left out becomes a root of its own, with its subtree), and with ``parent_id`` the node moves under
that parent; without it, the node keeps the parent it had.

Method: pure functions over :class:`Forest`, the parent and child links as read from the store;
:func:`plan_change` returns the rows to write or raises :class:`HierarchyError`. Sums are exact
integers of minor units, formatted at the asset's scale at the end.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from coffer.core.amounts import format_amount
from coffer.core.errors import ErrorCode
from coffer.query.sql_store import ChildRow

account_kind = "account"
node_kind = "node"
children_per_node_max = 10_000  # a wider level is a data import, not a hierarchy change


class HierarchyError(Exception):
    """A change the rules reject: 409 with ``code``; ``subject_id`` names the offending id."""

    def __init__(self, code: ErrorCode, message: str, subject_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subject_id = subject_id


@dataclass
class Forest:
    """Nodes and their ordered children; ``parent`` maps (child_id, kind) to its node."""

    children: dict[str, list[tuple[str, str]]]
    parent: dict[tuple[str, str], str]

    @classmethod
    def from_rows(cls, nodes: Sequence[str], rows: Sequence[ChildRow]) -> "Forest":
        children: dict[str, list[tuple[str, str]]] = {node_id: [] for node_id in nodes}
        parent: dict[tuple[str, str], str] = {}
        for node_id, _position, child_id, kind in sorted(rows, key=lambda row: (row[0], row[1])):
            children.setdefault(node_id, []).append((child_id, kind))
            parent[(child_id, kind)] = node_id
        return cls(children, parent)

    def parent_of(self, node_id: str) -> str | None:
        return self.parent.get((node_id, node_kind))

    def walk(self, node_id: str) -> Iterator[tuple[str, str | None, int]]:
        """(node_id, parent_id, depth) of the subtree, depth first, children in their order."""
        stack: list[tuple[str, str | None, int]] = [(node_id, self.parent_of(node_id), 0)]
        while stack:
            current, parent_id, depth = stack.pop()
            yield current, parent_id, depth
            child_nodes = [child_id for child_id, kind in self.children.get(current, []) if kind == node_kind]
            stack.extend((child_id, current, depth + 1) for child_id in reversed(child_nodes))

    def accounts_under(self, node_id: str) -> list[str]:
        return [
            child_id for current, _, _ in self.walk(node_id) for child_id, kind in self.children[current] if kind == account_kind
        ]


def plan_change(
    forest: Forest,
    node_id: str,
    parent_id: str | None,
    child_ids: Sequence[str],
    known_accounts: set[str],
) -> tuple[list[str], list[ChildRow]]:
    """Create or replace ``node_id`` with ``child_ids`` (under ``parent_id`` if given; else it keeps
    its parent). Return the ids of the nodes whose rows change, and all their child rows."""
    if node_id in known_accounts:
        raise HierarchyError(ErrorCode.INVALID_REQUEST, f"{node_id} is an account; a node needs an id of its own", node_id)
    if len(set(child_ids)) != len(child_ids):
        raise HierarchyError(ErrorCode.INVALID_REQUEST, f"node {node_id} lists a child twice", node_id)
    children: list[tuple[str, str]] = []
    for child_id in child_ids:
        if child_id == node_id:
            raise HierarchyError(ErrorCode.INVALID_REQUEST, f"node {node_id} cannot be its own child", node_id)
        if child_id in forest.children:
            kind = node_kind
        elif child_id in known_accounts:
            kind = account_kind
        else:
            raise HierarchyError(ErrorCode.ACCOUNT_NOT_FOUND, f"child {child_id} is neither a known account nor a node", child_id)
        holder = forest.parent.get((child_id, kind))
        if holder is not None and holder != node_id:
            raise HierarchyError(ErrorCode.INVALID_REQUEST, f"{child_id} is already a child of node {holder}", child_id)
        children.append((child_id, kind))

    old_parent = forest.parent_of(node_id)
    new_parent = old_parent if parent_id is None else parent_id
    if new_parent is not None and new_parent not in forest.children:
        raise HierarchyError(ErrorCode.INVALID_REQUEST, f"parent node {new_parent} does not exist", new_parent)

    changed: dict[str, list[tuple[str, str]]] = {node_id: children}
    if new_parent != old_parent and old_parent is not None:
        changed[old_parent] = [child for child in forest.children[old_parent] if child != (node_id, node_kind)]
    if new_parent is not None and (node_id, node_kind) not in changed.get(new_parent, forest.children[new_parent]):
        changed[new_parent] = [*changed.get(new_parent, forest.children[new_parent]), (node_id, node_kind)]

    after = Forest({**forest.children, **changed}, {})
    for parent, entries in after.children.items():
        for entry in entries:
            after.parent[entry] = parent
    _refuse_cycle(after, node_id)
    rows = [
        (parent, position, child_id, kind)
        for parent, entries in changed.items()
        for position, (child_id, kind) in enumerate(entries)
    ]
    return list(changed), rows


def _refuse_cycle(forest: Forest, node_id: str) -> None:
    """With at most one parent each, a cycle through ``node_id`` shows walking up from it."""
    seen = {node_id}
    current = forest.parent_of(node_id)
    while current is not None:
        if current in seen:
            raise HierarchyError(ErrorCode.INVALID_REQUEST, f"the change would make node {current} its own ancestor", current)
        seen.add(current)
        current = forest.parent_of(current)


def subtree_balances(
    forest: Forest, node_id: str, available: dict[str, tuple[str, int, int]], root_only: bool
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The node's available balance per asset, and one entry per node of its subtree (the node alone
    with ``root_only``). ``available`` maps account_id to (asset, scale, minor units) at the seq;
    accounts absent from it did not exist yet and count nothing."""
    order = list(forest.walk(node_id))
    sums: dict[str, dict[str, int]] = {}
    scales: dict[str, int] = {}
    for current, _, _ in reversed(order):  # children before parents
        totals: dict[str, int] = {}
        for child_id, kind in forest.children[current]:
            if kind == node_kind:
                for asset, amount in sums[child_id].items():
                    totals[asset] = totals.get(asset, 0) + amount
                continue
            found = available.get(child_id)
            if found is None:
                continue
            asset, scale, amount = found
            scales[asset] = scale
            totals[asset] = totals.get(asset, 0) + amount
        sums[current] = totals

    def spelled(totals: dict[str, int]) -> dict[str, str]:
        return {asset: format_amount(totals[asset], scales[asset]) for asset in sorted(totals)}

    entries = [
        {"node_id": current, "parent_id": parent_id, "depth": depth, "available": spelled(sums[current])}
        for current, parent_id, depth in (order[:1] if root_only else order)
    ]
    return spelled(sums[node_id]), entries
