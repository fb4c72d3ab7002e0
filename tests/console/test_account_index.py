"""The sorted account-id index behind ``GET /v1/search/accounts``: pages, prefixes, new accounts."""

import pytest

from coffer.server.account_search import AccountIndex


def _accounts(*ids: str) -> dict[str, object]:
    return dict.fromkeys(ids, object())


def test_a_prefix_finds_its_ids_in_order_a_page_at_a_time() -> None:
    accounts = _accounts("bob", "alice", "al", "alfred", "carol", "ally")
    index = AccountIndex()
    assert index.search(accounts, "al", 2) == (["al", "alfred"], True)
    assert index.search(accounts, "al", 2, after="alfred") == (["alice", "ally"], False)
    assert index.search(accounts, "al", 10, after="ally") == ([], False)
    assert index.search(accounts, "", 10) == (["al", "alfred", "alice", "ally", "bob", "carol"], False)
    assert index.search(accounts, "zed", 10) == ([], False)


def test_after_before_the_prefix_does_not_leave_it() -> None:
    accounts = _accounts("a1", "b1", "b2", "c1")
    assert AccountIndex().search(accounts, "b", 10, after="a9") == (["b1", "b2"], False)


@pytest.mark.parametrize("added", [1, 50])  # one by one (insort), and many at once (a re-sort)
def test_accounts_created_after_the_first_search_are_found(added: int) -> None:
    accounts = _accounts(*(f"id-{number:03d}" for number in range(0, 100, 2)))
    index = AccountIndex()
    assert len(index.search(accounts, "id-", 1000)[0]) == 50
    for number in range(1, 2 * added, 2):
        accounts[f"id-{number:03d}"] = object()
    found, more = index.search(accounts, "id-", 1000)
    assert found == sorted(accounts) and not more


def test_a_new_state_machine_is_indexed_afresh() -> None:
    index = AccountIndex()
    assert index.search(_accounts("x", "y"), "", 10) == (["x", "y"], False)
    # A recovery replaces the dict: the old ids must not linger, though the new one is as long.
    assert index.search(_accounts("p", "q"), "", 10) == (["p", "q"], False)
