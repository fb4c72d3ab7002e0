"""The hierarchy's rules, and its sums against a brute-force sum over a replayed history."""

import random

import pytest

from coffer.core.amounts import format_amount
from coffer.core.errors import ErrorCode
from coffer.core.events import event_decoder
from coffer.query.hierarchy import Forest, HierarchyError, plan_change, subtree_balances
from coffer.query.sql_store import SqlStore
from tests.query.node_process import LoadedNode, project

known = {"a1", "a2", "a3", "a4"}


def _forest(*changes: tuple[str, str | None, list[str]]) -> Forest:
    forest = Forest({}, {})
    for node_id, parent_id, children in changes:
        nodes, rows = plan_change(forest, node_id, parent_id, children, known)
        forest = _applied(forest, nodes, rows)
    return forest


def _applied(forest: Forest, nodes: list[str], rows: list[tuple[str, int, str, str]]) -> Forest:
    kept = [
        (node_id, position, child_id, kind)
        for node_id, entries in forest.children.items()
        if node_id not in nodes
        for position, (child_id, kind) in enumerate(entries)
    ]
    return Forest.from_rows(sorted({*forest.children, *nodes}), [*kept, *rows])


def _rejected(forest: Forest, node_id: str, parent_id: str | None, children: list[str]) -> HierarchyError:
    with pytest.raises(HierarchyError) as rejected:
        plan_change(forest, node_id, parent_id, children, known)
    return rejected.value


def test_nodes_hold_accounts_and_nodes() -> None:
    forest = _forest(("root", None, ["a1"]), ("eu", "root", ["a2", "a3"]), ("de", "eu", ["a4"]))
    assert forest.children["root"] == [("a1", "account"), ("eu", "node")]
    assert [node_id for node_id, _, _ in forest.walk("root")] == ["root", "eu", "de"]
    assert sorted(forest.accounts_under("root")) == ["a1", "a2", "a3", "a4"]
    assert forest.accounts_under("de") == ["a4"]


def test_replacing_a_node_keeps_its_parent_and_moving_it_leaves_the_old_one() -> None:
    forest = _forest(("root", None, []), ("other", None, []), ("eu", "root", ["a1"]), ("eu", None, ["a2"]))
    assert forest.parent_of("eu") == "root" and forest.children["eu"] == [("a2", "account")]
    moved = _applied(forest, *plan_change(forest, "eu", "other", ["a2"], known))
    assert moved.parent_of("eu") == "other" and moved.children["root"] == []


def test_unknown_children_are_rejected() -> None:
    rejected = _rejected(_forest(), "root", None, ["a1", "nobody"])
    assert (rejected.code, rejected.subject_id) == (ErrorCode.ACCOUNT_NOT_FOUND, "nobody")


def test_cycles_are_rejected() -> None:
    forest = _forest(("root", None, []), ("eu", "root", []), ("de", "eu", []))
    assert _rejected(forest, "root", None, ["de"]).code == ErrorCode.INVALID_REQUEST  # de already has a parent
    assert "ancestor" in _rejected(forest, "root", "de", ["eu"]).message
    assert "ancestor" in _rejected(_forest(("root", None, []), ("eu", "root", [])), "eu", None, ["root"]).message
    assert "own child" in _rejected(forest, "eu", None, ["eu"]).message


def test_a_child_has_one_parent_and_nodes_are_not_accounts() -> None:
    forest = _forest(("left", None, ["a1"]), ("right", None, []))
    assert "already a child" in _rejected(forest, "right", None, ["a1"]).message
    assert "is an account" in _rejected(forest, "a2", None, []).message
    assert "does not exist" in _rejected(forest, "x", "nowhere", []).message
    assert "twice" in _rejected(forest, "x", None, ["a1", "a1"]).message


def _brute_force(store: SqlStore, seq: int, forest: Forest, node_id: str) -> dict[str, str]:
    """Replay every event up to ``seq`` and add up the subtree's accounts the plain way."""
    latest = {}
    for record in store.events(to_seq=seq + 1, limit=100_000):
        for account in event_decoder.decode(record.body).accounts:
            latest[account.account_id] = account

    def accounts(current: str) -> list[str]:
        found = []
        for child_id, kind in forest.children[current]:
            found += accounts(child_id) if kind == "node" else [child_id]
        return found

    totals: dict[str, int] = {}
    scales: dict[str, int] = {}
    for account_id in accounts(node_id):
        if account_id in latest:
            account = latest[account_id]
            totals[account.asset] = totals.get(account.asset, 0) + account.available
            scales[account.asset] = account.scale
    return {asset: format_amount(total, scales[asset]) for asset, total in sorted(totals.items())}


def test_subtree_sums_match_a_brute_force_sum(mixed_node: LoadedNode, store: SqlStore) -> None:
    project(mixed_node.url, store, mixed_node.last_seq)
    rng = random.Random(5)
    accounts = list(mixed_node.account_ids)
    rng.shuffle(accounts)
    # A random tree: 8 nodes, each under an earlier one, the accounts spread over them.
    nodes = [f"n{number}" for number in range(8)]
    for number, node_id in enumerate(nodes):
        parent_id = None if number == 0 else nodes[rng.randrange(number)]
        mine = accounts[number::8]
        store.change_hierarchy(
            lambda names, rows, node_id=node_id, parent_id=parent_id, mine=mine: plan_change(
                Forest.from_rows(names, rows), node_id, parent_id, mine, set(accounts)
            )
        )
    forest = Forest.from_rows(*store.hierarchy_rows())
    for seq in [*sorted(rng.sample(range(1, mixed_node.last_seq + 1), 6)), mixed_node.last_seq]:
        available = store.available_at(forest.accounts_under("n0"), seq)
        root, entries = subtree_balances(forest, "n0", available, root_only=False)
        assert root == _brute_force(store, seq, forest, "n0")
        assert [entry["node_id"] for entry in entries] == [node_id for node_id, _, _ in forest.walk("n0")]
        for entry in entries:
            assert entry["available"] == _brute_force(store, seq, forest, entry["node_id"]), (seq, entry)
        only_root, root_entries = subtree_balances(forest, "n0", available, root_only=True)
        assert only_root == root and [entry["node_id"] for entry in root_entries] == ["n0"]
