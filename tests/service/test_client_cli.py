"""The client and the CLI against a real ``coffer serve`` (tests/service/conftest.py).

Expected answers come from the contract (docs/api.md), not from the server's code: where the server answers
otherwise, the test fails and names the contract's rule.
"""

import asyncio
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import msgspec
import pytest
from click.testing import CliRunner

import coffer
import coffer.client
from coffer import (
    AsyncClient,
    AuthError,
    Client,
    CofferError,
    InvalidRequestError,
    NotAvailableError,
    NotFoundError,
    RejectedError,
    TransportError,
)
from coffer.cli import main
from coffer.client import Leg, Precondition, RetryPolicy
from tests.service.server_process import CofferServer, free_port

fast_retry = RetryPolicy(attempts_max=3, backoff_s_first=0.01, backoff_s_max=0.05)

admin_key = "admin-key-0123456789"
operator_key = "operator-key-0123456789"
reader_key = "reader-key-0123456789"


def new_id(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def _module_client(_shared_server: CofferServer) -> Iterator[Client]:
    with Client(_shared_server.url, retry=fast_retry) as api:
        yield api


@pytest.fixture
def client(server: CofferServer, _module_client: Client) -> Client:
    """A client of ``server`` (the same URL across restarts), shared by the module's tests."""
    return _module_client


def open_accounts(api: Client, *balances: str, asset: str = "USD") -> list[str]:
    """Fresh accounts holding the given available balances (deposited by one batch operation)."""
    ids = [new_id() for _ in balances]
    for account_id in ids:
        api.create_account(account_id, asset)
    legs = [Leg(account_id=account_id, amount=amount, asset=asset) for account_id, amount in zip(ids, balances, strict=True)]
    legs = [leg for leg in legs if leg.amount != "0"]
    if legs:
        api.batch_operation(legs)
    return ids


def available(api: Client, account_id: str) -> str:
    return api.get_account(account_id).available


def events_of(api: Client, dedup_id: str) -> list[coffer.client.EventView]:
    # The session's node is shared (the load benchmark test alone adds thousands of events):
    # look at the most recent ones, where the test's own events are.
    head = api.audit_head().seq
    return [event for event in api.events(from_seq=max(1, head - 9_999), limit=10_000) if event.dedup_id == dedup_id]


# ====================================================================================== commands


def test_create_account_answers_the_new_account_at_full_scale(client: Client) -> None:
    account_id, asset = new_id(), new_id("BTC")  # an asset of its own: its scale is fixed by its first account
    result = client.create_account(
        account_id, asset, scale=8, lower_limit="-1.5", upper_limit=Decimal("21"), metadata={"owner": "ann"}, dedup_id=new_id("d")
    )
    (view,) = result.accounts
    assert (view.account_id, view.asset, view.scale, view.state) == (account_id, asset, 8, "NORMAL")
    assert (view.lower_limit, view.upper_limit, view.available) == ("-1.50000000", "21.00000000", "0.00000000")
    assert (view.version, view.seq, view.metadata) == (1, result.seq, {"owner": "ann"})
    assert result.log_index >= 1
    current = client.get_account(account_id)
    assert current == msgspec.structs.replace(view, seq=current.seq)


def test_a_command_without_dedup_id_gets_a_fresh_one_and_reports_it(client: Client) -> None:
    first = client.create_account(new_id(), "USD")
    second = client.create_account(new_id(), "USD")
    assert len(first.dedup_id) == 32 and first.dedup_id != second.dedup_id
    assert [event.seq for event in events_of(client, first.dedup_id)] == [first.seq]
    chosen = new_id("d")
    assert client.create_account(new_id(), "USD", dedup_id=chosen).dedup_id == chosen


def test_amounts_are_str_or_decimal_never_float_or_int(client: Client) -> None:
    source, target = open_accounts(client, "100", "0")
    client.transfer(source, target, Decimal("10.5"), "USD")
    client.transfer(source, target, Decimal("1E+1"), "USD")  # no exponent on the wire
    client.transfer(source, target, Decimal("0.2500"), "USD")  # trailing zeros are not decimals of the scale
    assert available(client, target) == "20.75"
    for wrong in (10.5, 10, True):
        with pytest.raises(TypeError):
            client.transfer(source, target, wrong, "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.transfer(source, target, Decimal("NaN"), "USD")
    assert available(client, target) == "20.75"


def test_transfer_moves_money_and_answers_both_accounts(client: Client) -> None:
    source, target = open_accounts(client, "50", "0")
    result = client.transfer(source, target, "12.34", "USD", metadata={"order": "o-1"}, expected_from_balance="50")
    assert {view.account_id: view.available for view in result.accounts} == {source: "37.66", target: "12.34"}
    assert all(view.seq == result.seq for view in result.accounts)
    (event,) = events_of(client, result.dedup_id)
    assert (event.seq, event.log_index) == (result.seq, result.log_index)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("below lower limit", "LOWER_LIMIT_EXCEEDED"),
        ("above upper limit", "UPPER_LIMIT_EXCEEDED"),
        ("same account", "SAME_ACCOUNT"),
        ("unknown account", "ACCOUNT_NOT_FOUND"),
        ("other asset", "ASSET_MISMATCH"),
        ("wrong expected balance", "PRECONDITION_FAILED"),
    ],
)
def test_rejections_raise_rejected_error_with_the_api_code(client: Client, case: str, code: str) -> None:
    source, target = open_accounts(client, "50", "0")
    capped = new_id()
    client.create_account(capped, "USD", upper_limit="5")
    euro = open_accounts(client, "0", asset="EUR")[0]
    attempts: dict[str, Callable[[], object]] = {
        "below lower limit": lambda: client.transfer(source, target, "50.01", "USD"),
        "above upper limit": lambda: client.transfer(source, capped, "5.01", "USD"),
        "same account": lambda: client.transfer(source, source, "1", "USD"),
        "unknown account": lambda: client.transfer(source, new_id("nobody"), "1", "USD"),
        "other asset": lambda: client.transfer(source, euro, "1", "USD"),
        "wrong expected balance": lambda: client.transfer(source, target, "1", "USD", expected_from_balance="49.99"),
    }
    with pytest.raises(RejectedError) as caught:
        attempts[case]()
    error = caught.value
    assert (error.status, error.code) == (409, code)
    assert error.message and error.dedup_id
    assert isinstance(error, CofferError) and str(error).startswith(f"{code}: ")
    assert available(client, source) == "50.00" and available(client, target) == "0.00"


def test_rejection_names_the_account(client: Client) -> None:
    source, target = open_accounts(client, "1", "0")
    with pytest.raises(RejectedError) as caught:
        client.transfer(source, target, "2", "USD")
    assert caught.value.account_id == source


def test_a_retry_of_the_same_dedup_id_returns_the_same_result_and_applies_once(client: Client) -> None:
    source, target = open_accounts(client, "30", "0")
    dedup_id = new_id("d")
    first = client.transfer(source, target, "10", "USD", dedup_id=dedup_id)
    again = client.transfer(source, target, "10", "USD", dedup_id=dedup_id)
    assert again == first
    assert available(client, source) == "20.00"
    assert len(events_of(client, dedup_id)) == 1
    with pytest.raises(RejectedError) as caught:
        client.transfer(source, target, "11", "USD", dedup_id=dedup_id)
    assert caught.value.code == "DEDUP_ID_REUSED"


def test_a_retry_of_a_rejected_command_returns_the_same_409_even_when_it_would_now_pass(client: Client) -> None:
    source, target = open_accounts(client, "5", "0")
    dedup_id = new_id("d")
    with pytest.raises(RejectedError):
        client.transfer(source, target, "10", "USD", dedup_id=dedup_id)
    client.batch_operation([Leg(account_id=source, amount="100", asset="USD")])
    with pytest.raises(RejectedError) as caught:
        client.transfer(source, target, "10", "USD", dedup_id=dedup_id)
    assert caught.value.code == "LOWER_LIMIT_EXCEEDED"
    assert available(client, target) == "0.00"


def test_a_command_for_an_account_that_does_not_exist_is_a_final_rejection(client: Client) -> None:
    # README, "API notes": the command goes to the log, is rejected there, and that outcome is
    # final for its dedup_id, also once the account exists.
    account_id = new_id()
    dedup_id = new_id("d")
    with pytest.raises(RejectedError) as first:
        client.reserve(account_id, "r1", "1", dedup_id=dedup_id)
    assert first.value.code == "ACCOUNT_NOT_FOUND"
    client.create_account(account_id, "USD")
    client.batch_operation([Leg(account_id=account_id, amount="5", asset="USD")])
    with pytest.raises(RejectedError) as again:
        client.reserve(account_id, "r1", "1", dedup_id=dedup_id)
    assert (again.value.code, again.value.message) == (first.value.code, first.value.message)
    assert client.reserve(account_id, "r1", "1").accounts[0].reservations == {"r1": "1.00"}


def test_malformed_requests_raise_invalid_request_error_and_keep_their_dedup_id_free(client: Client) -> None:
    source, target = open_accounts(client, "10", "0")
    dedup_id = new_id("d")
    body = {"dedup_id": dedup_id, "from_account_id": source, "to_account_id": target, "amount": 1.5, "asset": "USD"}
    with pytest.raises(InvalidRequestError) as caught:
        client.request("POST", "/v1/transfers", json=body)  # a JSON number, which the client itself refuses to send
    assert (caught.value.status, caught.value.code) == (422, "INVALID_AMOUNT")
    for amount in ("1.005", "+1", ".5", "1e2", " 1", "NaN", "0", "-1"):
        with pytest.raises(InvalidRequestError) as caught:
            client.transfer(source, target, amount, "USD", dedup_id=dedup_id)
        assert (caught.value.status, caught.value.code) == (422, "INVALID_AMOUNT"), amount
    with pytest.raises(InvalidRequestError) as caught:
        client.create_account("not an id!", "USD")
    assert (caught.value.status, caught.value.code) == (422, "INVALID_REQUEST")
    # None of those used up the dedup_id (docs/api.md, status codes).
    assert client.transfer(source, target, "1", "USD", dedup_id=dedup_id).dedup_id == dedup_id
    assert available(client, target) == "1.00"


def test_a_negative_zero_limit_is_in_the_amount_grammar(client: Client) -> None:
    # docs/api.md, Amounts: ^-?(0|[1-9][0-9]*)(\.[0-9]{1,S})?$ with the sign allowed on limits; "-0" matches.
    (account_id,) = open_accounts(client, "0")
    assert client.update_limits(account_id, lower_limit="-0").accounts[0].lower_limit == "0.00"
    assert client.update_limits(account_id, lower_limit="-0.00").accounts[0].lower_limit == "0.00"


def test_unknown_account_is_not_found(client: Client) -> None:
    missing = new_id("nobody")
    with pytest.raises(NotFoundError) as caught:
        client.get_account(missing)
    assert (caught.value.status, caught.value.code, caught.value.account_id) == (404, "ACCOUNT_NOT_FOUND", missing)
    with pytest.raises(NotFoundError):
        client.history(missing)


def test_account_lifecycle_lock_unlock_delete(client: Client) -> None:
    account_id, other = open_accounts(client, "3", "0")
    assert client.lock_account(account_id).accounts[0].state == "LOCKED"
    with pytest.raises(RejectedError) as caught:
        client.transfer(account_id, other, "1", "USD")
    assert caught.value.code == "ACCOUNT_LOCKED"
    with pytest.raises(RejectedError) as caught:
        client.lock_account(account_id)
    assert caught.value.code == "INVALID_STATE_TRANSITION"
    assert client.unlock_account(account_id).accounts[0].state == "NORMAL"
    with pytest.raises(RejectedError) as caught:
        client.delete_account(account_id)
    assert caught.value.code == "ACCOUNT_NOT_EMPTY"
    client.transfer(account_id, other, "3", "USD")
    deleted = client.delete_account(account_id).accounts[0]
    assert deleted.state == "DELETED"
    assert client.get_account(account_id).state == "DELETED"  # a deleted account still answers GET
    with pytest.raises(RejectedError) as caught:
        client.create_account(account_id, "USD")
    assert caught.value.code == "ACCOUNT_EXISTS"
    with pytest.raises(RejectedError) as caught:
        client.transfer(other, account_id, "1", "USD")
    assert caught.value.code == "ACCOUNT_DELETED"


def test_update_limits_keeps_what_is_not_given_and_none_removes_the_upper_limit(client: Client) -> None:
    account_id, other = open_accounts(client, "0", "10")
    view = client.update_limits(account_id, lower_limit="-20", upper_limit="100").accounts[0]
    assert (view.lower_limit, view.upper_limit) == ("-20.00", "100.00")
    view = client.update_limits(account_id, lower_limit=Decimal("-5")).accounts[0]
    assert (view.lower_limit, view.upper_limit) == ("-5.00", "100.00")
    client.transfer(account_id, other, "5", "USD")  # down to the lower limit
    with pytest.raises(RejectedError) as caught:
        client.update_limits(account_id, lower_limit="0")
    assert caught.value.code == "LOWER_LIMIT_EXCEEDED"
    view = client.update_limits(account_id, upper_limit=None).accounts[0]
    assert (view.lower_limit, view.upper_limit, view.available) == ("-5.00", None, "-5.00")


def test_batch_operation_is_all_or_nothing_with_preconditions(client: Client) -> None:
    first, second = open_accounts(client, "0", "0")
    result = client.batch_operation(
        [Leg(account_id=first, amount="10", asset="USD"), {"account_id": second, "amount": Decimal("2.5"), "asset": "USD"}]
    )
    assert sorted(view.available for view in result.accounts) == ["10.00", "2.50"]
    version = client.get_account(first).version
    with pytest.raises(RejectedError) as caught:  # the second leg breaks a limit: the first does not apply
        client.batch_operation(
            [Leg(account_id=first, amount="-1", asset="USD"), Leg(account_id=second, amount="-3", asset="USD")]
        )
    assert caught.value.code == "LOWER_LIMIT_EXCEEDED"
    for condition in (
        Precondition(account_id=first, min_balance="10.01"),
        Precondition(account_id=first, max_balance="9.99"),
        Precondition(account_id=first, expected_balance="9"),
        {"account_id": first, "expected_version": version + 1},
    ):
        with pytest.raises(RejectedError) as caught:
            client.batch_operation([Leg(account_id=second, amount="1", asset="USD")], preconditions=[condition])
        assert caught.value.code == "PRECONDITION_FAILED"
    passing = Precondition(account_id=first, expected_balance="10", min_balance="10", max_balance="10", expected_version=version)
    client.batch_operation([Leg(account_id=first, amount="-1", asset="USD")], preconditions=[passing])
    assert (available(client, first), available(client, second)) == ("9.00", "2.50")


def test_reserve_and_release(client: Client) -> None:
    (account_id,) = open_accounts(client, "20")
    view = client.reserve(account_id, "hold", "5").accounts[0]
    assert (view.available, view.reservations) == ("15.00", {"hold": "5.00"})
    view = client.reserve(account_id, "hold", Decimal("1")).accounts[0]
    assert view.reservations == {"hold": "6.00"}
    view = client.release(account_id, "hold", "2").accounts[0]
    assert (view.available, view.reservations) == ("16.00", {"hold": "4.00"})
    with pytest.raises(RejectedError) as caught:
        client.release(account_id, "hold", "4.01")
    assert caught.value.code == "INSUFFICIENT_RESERVATION"
    with pytest.raises(RejectedError) as caught:
        client.release(account_id, "no-such-hold")
    assert caught.value.code == "RESERVATION_NOT_FOUND"
    with pytest.raises(RejectedError) as caught:
        client.reserve(account_id, "big", "16.01")
    assert caught.value.code == "LOWER_LIMIT_EXCEEDED"
    view = client.release(account_id, "hold").accounts[0]  # all of it
    assert (view.available, view.reservations) == ("20.00", {})


def test_tcc_try_confirm_cancel(client: Client) -> None:
    payer, payee = open_accounts(client, "10", "0")
    legs = [Leg(account_id=payer, amount="-4", asset="USD"), Leg(account_id=payee, amount="4", asset="USD")]
    txn_id = new_id("txn")
    views = {view.account_id: view for view in client.tcc_try(txn_id, legs, timeout_s=600).accounts}
    assert (views[payer].available, views[payer].pending_out) == ("6.00", {txn_id: "4.00"})
    assert (views[payee].available, views[payee].pending_in) == ("0.00", {txn_id: "4.00"})
    with pytest.raises(RejectedError) as caught:
        client.tcc_try(txn_id, legs)
    assert caught.value.code == "TXN_EXISTS"
    views = {view.account_id: view for view in client.tcc_confirm(txn_id).accounts}
    assert (views[payer].pending_out, views[payee].available, views[payee].pending_in) == ({}, "4.00", {})
    with pytest.raises(RejectedError) as caught:
        client.tcc_cancel(txn_id)
    assert caught.value.code == "TXN_ALREADY_CONFIRMED"

    cancelled = new_id("txn")
    client.tcc_try(cancelled, legs)
    client.tcc_cancel(cancelled)
    assert (available(client, payer), available(client, payee)) == ("6.00", "4.00")
    with pytest.raises(RejectedError) as caught:
        client.tcc_confirm(cancelled)
    assert caught.value.code == "TXN_ALREADY_CANCELLED"
    with pytest.raises(RejectedError) as caught:
        client.tcc_confirm(new_id("txn"))
    assert caught.value.code == "TXN_NOT_FOUND"


def test_compensate_undoes_a_transfer_or_records_a_null_compensation(client: Client) -> None:
    source, target = open_accounts(client, "10", "0")
    original = client.transfer(source, target, "3", "USD")
    undone = client.compensate(original.dedup_id)
    assert undone.compensation == "COMPENSATED"
    assert (available(client, source), available(client, target)) == ("10.00", "0.00")

    txn = client.tcc_try(new_id("txn"), [Leg(account_id=target, amount="1", asset="USD")])
    with pytest.raises(RejectedError) as caught:
        client.compensate(txn.dedup_id)
    assert caught.value.code == "ORIGINAL_NOT_COMPENSABLE"


def test_an_original_after_its_null_compensation_is_rejected(client: Client) -> None:
    source, target = open_accounts(client, "10", "0")
    late = new_id("d")
    assert client.compensate(late).compensation == "NULL_COMPENSATED"
    with pytest.raises(RejectedError) as caught:  # the original arrives after its compensation
        client.transfer(source, target, "3", "USD", dedup_id=late)
    assert available(client, target) == "0.00"
    # ALREADY_COMPENSATED is one of the codes docs/api.md lists.
    assert caught.value.code == "ALREADY_COMPENSATED"


def test_commands_batch_answers_each_command_in_order(client: Client) -> None:
    account_id, other = new_id(), new_id()
    given = new_id("d")
    commands = [
        {"type": "create_account", "account_id": account_id, "asset": "USD"},
        {"type": "create_account", "account_id": other, "asset": "USD"},
        {"type": "batch_operation", "legs": [{"account_id": account_id, "amount": Decimal("10"), "asset": "USD"}]},
        {
            "type": "transfer",
            "from_account_id": account_id,
            "to_account_id": other,
            "amount": "4",
            "asset": "USD",
            "dedup_id": given,
        },
        {"type": "transfer", "from_account_id": account_id, "to_account_id": other, "amount": "400", "asset": "USD"},
        {"type": "transfer", "from_account_id": account_id, "to_account_id": other, "amount": "0.001", "asset": "USD"},
        {"type": "lock_account", "account_id": other},
        {"type": "no_such_command"},
    ]
    outcomes = client.commands(commands)
    assert [outcome.status for outcome in outcomes] == [200, 200, 200, 200, 409, 422, 200, 422]
    assert outcomes[3].dedup_id == given
    assert len({outcome.dedup_id for outcome in outcomes}) == len(commands)
    transferred = outcomes[3].result
    assert transferred is not None and transferred.dedup_id == given
    assert {view.account_id: view.available for view in transferred.accounts} == {account_id: "6.00", other: "4.00"}
    assert outcomes[4].ok is False and outcomes[4].error is not None
    assert isinstance(outcomes[4].exception(), RejectedError) and outcomes[4].error.code == "LOWER_LIMIT_EXCEEDED"
    assert isinstance(outcomes[5].exception(), InvalidRequestError) and outcomes[5].error.code == "INVALID_AMOUNT"
    assert outcomes[0].exception() is None
    seqs = [outcome.result.seq for outcome in outcomes if outcome.result is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # The same payload on its own endpoint is the same command: its dedup_id answers the original.
    assert client.transfer(account_id, other, "4", "USD", dedup_id=given) == transferred
    with pytest.raises(TypeError):
        client.commands([{"type": "transfer", "amount": 1.5}])


def test_commands_batch_size_limits_are_422_for_the_whole_request(client: Client) -> None:
    with pytest.raises(InvalidRequestError):
        client.commands([])
    too_many = [{"type": "lock_account", "account_id": "x", "dedup_id": f"d{i}"} for i in range(8191)]
    with pytest.raises(InvalidRequestError) as caught:
        client.commands(too_many)
    assert caught.value.status == 422


# ======================================================================================= queries


def test_get_accounts_as_of_one_seq_with_missing_ids(client: Client) -> None:
    first, second = open_accounts(client, "1", "2")
    before = client.audit_head().seq
    client.transfer(first, second, "1", "USD")
    missing = new_id("nobody")
    now = client.get_accounts([first, second, missing])
    assert now.missing == [missing]
    assert {key: view.available for key, view in now.accounts.items()} == {first: "0.00", second: "3.00"}
    assert all(view.seq == now.seq for view in now.accounts.values())
    then = client.get_accounts([first, second], at_seq=before)
    assert then.seq == before and then.missing == []
    assert {key: view.available for key, view in then.accounts.items()} == {first: "1.00", second: "2.00"}


def test_reads_ahead_of_the_node_are_not_available(server: CofferServer) -> None:
    with Client(server.url, retry=RetryPolicy(attempts_max=1)) as api:
        (account_id,) = open_accounts(api, "7")
        written = api.transfer(account_id, open_accounts(api, "0")[0], "1", "USD")
        view = api.get_account(account_id, min_seq=written.seq)
        assert view.seq >= written.seq and view.available == "6.00"
        with pytest.raises(NotAvailableError) as caught:
            api.get_account(account_id, min_seq=written.seq + 1_000_000)
        assert (caught.value.status, caught.value.code) == (503, "NOT_AVAILABLE")
        with pytest.raises(NotAvailableError) as caught:
            api.get_accounts([account_id], at_seq=written.seq + 1_000_000)
        assert (caught.value.status, caught.value.code) == (503, "NOT_AVAILABLE")


def test_history_lists_versions_oldest_first_by_seq_and_time(client: Client) -> None:
    account_id, other = open_accounts(client, "10", "0")
    client.transfer(account_id, other, "1", "USD")
    client.reserve(account_id, "r", "2")
    versions = client.history(account_id)
    assert [version.version for version in versions] == [1, 2, 3, 4]
    assert [version.available for version in versions] == ["0.00", "10.00", "9.00", "7.00"]
    assert all(version.time and version.time.endswith("Z") for version in versions)
    assert [v.version for v in client.history(account_id, from_seq=versions[1].seq, to_seq=versions[3].seq)] == [2, 3]
    assert [v.version for v in client.history(account_id, limit=2)] == [1, 2]
    first_time = datetime.fromisoformat(versions[0].time.replace("Z", "+00:00"))  # type: ignore[union-attr]
    hour_later = first_time + timedelta(hours=1)
    assert len(client.history(account_id, from_time=first_time, to_time=hour_later)) == 4
    assert client.history(account_id, from_time=int(hour_later.timestamp())) == []
    assert len(client.history(account_id, to_time=hour_later.isoformat())) == 4
    with pytest.raises(InvalidRequestError):
        client.history(account_id, limit=10_001)


def test_events_carry_a_hash_chain_up_to_the_audit_head(client: Client) -> None:
    account_id, other = open_accounts(client, "5", "0")
    moved = client.transfer(account_id, other, "5", "USD")
    head = client.audit_head()
    assert head.seq >= moved.seq and len(head.hash) == 64
    chain = client.events(from_seq=max(1, head.seq - 20), to_seq=head.seq + 1)
    assert [event.seq for event in chain] == list(range(max(1, head.seq - 20), head.seq + 1))
    for previous, event in itertools.pairwise(chain):
        assert event.prev_hash == previous.hash
    assert chain[-1].hash == head.hash
    (event,) = client.events(from_seq=moved.seq, to_seq=moved.seq + 1)
    assert (event.dedup_id, event.log_index) == (moved.dedup_id, moved.log_index)
    assert {view.account_id: view.available for view in event.accounts} == {account_id: "0.00", other: "5.00"}
    assert datetime.fromisoformat(event.time.replace("Z", "+00:00")).tzinfo is not None
    assert len(client.events(limit=2)) == 2
    assert client.events(from_time=datetime.now(UTC) + timedelta(hours=1)) == []
    with pytest.raises(InvalidRequestError):
        client.events(limit=0)


def test_operations_routes(client: Client) -> None:
    assert client.healthz().status == "ok"
    assert client.readyz().status == "ready"
    assert "coffer_commands" in client.metrics()
    assert client.set_log_level("debug") == "debug"
    assert client.set_log_level("warning") == "warning"
    with pytest.raises(InvalidRequestError):
        client.set_log_level("loud")


# =================================================================================== credentials


@pytest.fixture(scope="module")
def keyed_server(server_factory: Callable[..., CofferServer]) -> CofferServer:
    keys = f"admin:{admin_key},operator:{operator_key},reader:{reader_key}"
    return server_factory(environment={"COFFER_API_KEYS": keys})


def test_credentials_401_and_roles_403(keyed_server: CofferServer) -> None:
    account_id, other = new_id(), new_id()
    with Client(keyed_server.url, api_key=admin_key) as admin:
        admin.create_account(account_id, "USD")
        admin.create_account(other, "USD")
        admin.batch_operation([Leg(account_id=account_id, amount="5", asset="USD")])
        assert admin.set_log_level("info") == "info"
    for key in (None, "not-a-key-0123456789"):
        with Client(keyed_server.url, api_key=key) as anonymous, pytest.raises(AuthError) as caught:
            anonymous.get_account(account_id)
        assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
    with Client(keyed_server.url, api_key=reader_key) as reader:
        assert reader.get_account(account_id).available == "5.00"
        with pytest.raises(AuthError) as caught:
            reader.transfer(account_id, other, "1", "USD")
        assert (caught.value.status, caught.value.code) == (403, "FORBIDDEN")
    with Client(keyed_server.url, api_key=operator_key) as operator:
        operator.transfer(account_id, other, "1", "USD")
        for attempt in (lambda: operator.create_account(new_id(), "USD"), lambda: operator.lock_account(account_id)):
            with pytest.raises(AuthError) as caught:
                attempt()
            assert (caught.value.status, caught.value.code) == (403, "FORBIDDEN")
    with Client(keyed_server.url) as anonymous:
        assert anonymous.healthz().status == "ok"  # health stays open for probes


def test_bearer_token_is_accepted_too(keyed_server: CofferServer) -> None:
    answer = httpx.get(f"{keyed_server.url}/v1/audit/head", headers={"Authorization": f"Bearer {reader_key}"})
    assert answer.status_code == 200


# ======================================================================================= retries


class RecordingTransport(httpx.BaseTransport):
    """Forwards to the network, remembering every request; ``fail_next`` answers lost on purpose."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport(verify=False)  # plain http only
        self.requests: list[tuple[str, bytes]] = []
        self.lose_answers = 0  # forward the request, then drop the answer as a reset connection would
        self.unavailable_answers = 0  # answer 503 without forwarding

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append((str(request.url), body))
        if self.unavailable_answers:
            self.unavailable_answers -= 1
            error = {"error": {"code": "NOT_AVAILABLE", "message": "injected"}}
            return httpx.Response(503, headers={"Retry-After": "0.2"}, json=error)
        response = self.inner.handle_request(request)
        if self.lose_answers:
            self.lose_answers -= 1
            response.read()
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def test_network_failure_on_the_first_url_is_retried_on_the_next_with_the_same_dedup_id(
    client: Client, server: CofferServer
) -> None:
    source, target = open_accounts(client, "10", "0")
    transport = RecordingTransport()
    dead = dead_url()
    with Client([dead, server.url], retry=fast_retry, transport=transport) as failover:
        result = failover.transfer(source, target, "2", "USD")
        (first_url, first_body), (second_url, second_body) = transport.requests
        assert first_url.startswith(dead) and second_url.startswith(server.url)
        assert first_body == second_body and json.loads(first_body)["dedup_id"] == result.dedup_id
        failover.transfer(source, target, "1", "USD")  # the client stays on the URL that answered
        assert transport.requests[-1][0].startswith(server.url) and len(transport.requests) == 3
    assert available(client, target) == "3.00"


def test_a_lost_answer_is_retried_with_the_same_dedup_id_and_never_applies_twice(client: Client, server: CofferServer) -> None:
    source, target = open_accounts(client, "10", "0")
    transport = RecordingTransport()
    transport.lose_answers = 1
    with Client(server.url, retry=fast_retry, transport=transport) as api:
        result = api.transfer(source, target, "4", "USD")
    first, second = (body for _, body in transport.requests)
    assert first == second
    assert available(client, source) == "6.00" and available(client, target) == "4.00"
    (event,) = events_of(client, result.dedup_id)
    assert event.seq == result.seq


def test_503_is_retried_after_the_retry_after_delay(
    client: Client, server: CofferServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = open_accounts(client, "10", "0")
    delays: list[float] = []
    monkeypatch.setattr(coffer.client.time, "sleep", delays.append)
    transport = RecordingTransport()
    transport.unavailable_answers = 2
    with Client(server.url, retry=RetryPolicy(attempts_max=3, backoff_s_first=0.001), transport=transport) as api:
        result = api.transfer(source, target, "1", "USD")
    assert delays == [0.2, 0.2]
    assert len({body for _, body in transport.requests}) == 1 and len(transport.requests) == 3
    assert len(events_of(client, result.dedup_id)) == 1


def test_retries_are_bounded_and_the_error_keeps_the_dedup_id(server: CofferServer) -> None:
    transport = RecordingTransport()
    with Client(dead_url(), retry=fast_retry, transport=transport) as api, pytest.raises(TransportError) as caught:
        api.transfer("a", "b", "1", "USD", dedup_id="kept")
    assert len(transport.requests) == fast_retry.attempts_max
    assert (caught.value.status, caught.value.dedup_id) == (None, "kept")
    transport = RecordingTransport()
    transport.unavailable_answers = 10
    with Client(server.url, retry=RetryPolicy(attempts_max=2, retry_after_s_max=0.01), transport=transport) as api:
        with pytest.raises(NotAvailableError) as unavailable:
            api.audit_head()
        assert unavailable.value.status == 503 and len(transport.requests) == 2
        with pytest.raises(NotAvailableError):
            api.readyz()  # readiness is asked once: the answer is the point
        assert len(transport.requests) == 3


def test_retry_delays_are_bounded_backoff_or_retry_after() -> None:
    policy = RetryPolicy(backoff_s_first=0.1, backoff_s_max=0.5, retry_after_s_max=3)
    assert all(0 <= policy.delay_s(waits, None) <= min(0.5, 0.1 * 2**waits) for waits in range(8) for _ in range(20))
    assert policy.delay_s(0, 1.0) == 1.0
    assert policy.delay_s(0, 60.0) == 3.0
    with pytest.raises(ValueError):
        RetryPolicy(attempts_max=0)


def test_answers_outside_the_contract_still_raise_coffer_errors(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.request("GET", "/v1/no-such-route")
    assert caught.value.status == 404
    not_coffer = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hello</html>"))
    with Client("http://127.0.0.1:9/", transport=not_coffer) as api, pytest.raises(CofferError) as caught:
        api.audit_head()
    assert (caught.value.status, caught.value.code) == (200, "INVALID_RESPONSE")


def test_a_killed_node_keeps_every_acknowledged_write(server: CofferServer) -> None:
    with Client(server.url, retry=fast_retry) as api:
        source, target = open_accounts(api, "10", "0")
        moved = api.transfer(source, target, "2.5", "USD")
        server.kill()
        with pytest.raises(TransportError):
            api.get_account(source)
        server.restart()
        assert api.get_account(target).available == "2.50"
        assert api.transfer(source, target, "2.5", "USD", dedup_id=moved.dedup_id) == moved  # still deduplicated
        assert api.get_account(source).available == "7.50"


# ================================================================================== async client


def test_async_client_covers_the_same_calls(server: CofferServer) -> None:
    async def scenario() -> None:
        dead = dead_url()
        async with AsyncClient([dead, server.url], retry=fast_retry) as api:
            first, second = new_id(), new_id()
            created = await api.create_account(first, "USD")
            await api.create_account(second, "USD", upper_limit="25")
            await api.batch_operation([Leg(account_id=first, amount="50", asset="USD")])
            moved = await api.transfer(first, second, Decimal("20"), "USD", dedup_id=created.dedup_id + "-t")
            assert await api.transfer(first, second, "20", "USD", dedup_id=moved.dedup_id) == moved
            with pytest.raises(RejectedError) as caught:
                await api.transfer(first, second, "10", "USD")
            assert caught.value.code == "UPPER_LIMIT_EXCEEDED"
            await api.reserve(first, "r", "5")
            await api.release(first, "r")
            await api.update_limits(second, upper_limit=None)
            await api.tcc_try("t-" + first, [Leg(account_id=first, amount="-1", asset="USD")])
            await api.tcc_cancel("t-" + first)
            await api.tcc_try("u-" + first, [Leg(account_id=first, amount="-1", asset="USD")])
            await api.tcc_confirm("u-" + first)
            assert (await api.compensate(moved.dedup_id)).compensation == "COMPENSATED"
            outcomes = await api.commands([{"type": "lock_account", "account_id": second}])
            assert outcomes[0].ok
            await api.unlock_account(second)
            assert (await api.get_account(first, min_seq=moved.seq)).available == "49.00"
            both = await api.get_accounts([first, second])
            assert set(both.accounts) == {first, second}
            assert [v.version for v in await api.history(second)][:2] == [1, 2]
            assert (await api.events(from_seq=moved.seq, to_seq=moved.seq + 1))[0].dedup_id == moved.dedup_id
            assert (await api.audit_head()).seq >= moved.seq
            assert (await api.healthz()).status == "ok" and (await api.readyz()).status == "ready"
            assert "coffer_" in await api.metrics()
            assert await api.set_log_level("warning") == "warning"
            assert (await api.request("GET", f"/v1/accounts/{first}"))["account_id"] == first
            with pytest.raises(NotFoundError):
                await api.get_account(new_id("nobody"))
            empty = new_id()
            await api.create_account(empty, "USD")
            await api.lock_account(empty)
            await api.unlock_account(empty)
            assert (await api.delete_account(empty)).accounts[0].state == "DELETED"

    asyncio.run(scenario())


def test_public_surface() -> None:
    assert coffer.__version__
    for name in ("Client", "AsyncClient", "CofferError", "RejectedError", "InvalidRequestError", "NotFoundError"):
        assert getattr(coffer, name) is getattr(coffer.client, name)
    for error_type in (RejectedError, InvalidRequestError, NotFoundError, NotAvailableError, AuthError, TransportError):
        assert issubclass(error_type, CofferError)


# ============================================================================================ CLI


@pytest.fixture
def cli(server: CofferServer) -> Callable[..., object]:
    runner = CliRunner()

    def invoke(*arguments: str, url: str | None = None, api_key: str | None = None) -> object:
        environment = {"COFFER_URL": url or server.url, "COFFER_API_KEY": api_key}
        return runner.invoke(main, list(arguments), env=environment, catch_exceptions=False)

    return invoke


def test_cli_account_create_and_show_as_table_and_json(cli: Callable[..., object]) -> None:
    account_id = new_id()
    created = cli("account", "create", account_id, "--asset", "USD", "--upper-limit", "1000", "--meta", "team=ops")
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("applied: seq ")
    header, row = created.stdout.splitlines()[1:3]
    assert header.split()[:4] == ["ACCOUNT", "ASSET", "STATE", "AVAILABLE"]
    assert row.split()[:4] == [account_id, "USD", "NORMAL", "0.00"]
    shown = cli("account", "show", account_id)
    assert shown.exit_code == 0
    card = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert (card["state"], card["available"], card["upper_limit"], card["metadata"]) == ("NORMAL", "0.00", "1000.00", "team=ops")
    as_json = json.loads(cli("account", "show", account_id, "--json").stdout)
    assert (as_json["account_id"], as_json["upper_limit"], as_json["metadata"]) == (account_id, "1000.00", {"team": "ops"})
    created_json = json.loads(cli("account", "create", new_id(), "--asset", new_id("POINTS"), "--scale", "0", "--json").stdout)
    assert created_json["accounts"][0]["scale"] == 0 and len(created_json["dedup_id"]) == 32


def test_cli_money_moves_and_exit_codes(cli: Callable[..., object], client: Client) -> None:
    source, target = open_accounts(client, "100", "0")
    moved = cli("transfer", source, target, "12.50", "--asset", "USD", "--dedup-id", "cli-" + source)
    assert moved.exit_code == 0, moved.output
    assert f"dedup_id cli-{source}" in moved.stdout and "87.50" in moved.stdout
    again = json.loads(cli("transfer", source, target, "12.50", "--asset", "USD", "--dedup-id", "cli-" + source, "--json").stdout)
    assert again["seq"] == int(moved.stdout.split()[2].rstrip(","))

    rejected = cli("transfer", source, target, "1000", "--asset", "USD")
    assert rejected.exit_code == 1
    assert rejected.stderr.startswith("error: LOWER_LIMIT_EXCEEDED: ") and rejected.stdout == ""
    invalid = cli("transfer", source, target, "1.005", "--asset", "USD")
    assert (invalid.exit_code, invalid.stderr.split(":")[:2]) == (2, ["error", " INVALID_AMOUNT"])
    missing = cli("account", "show", new_id("nobody"))
    assert missing.exit_code == 3 and missing.stderr.startswith("error: ACCOUNT_NOT_FOUND: ")
    unreachable = cli("transfer", source, target, "1", "--asset", "USD", "--dedup-id", "lost-1", url=dead_url())
    assert unreachable.exit_code == 4 and "error: TRANSPORT_ERROR" in unreachable.stderr
    assert "--dedup-id lost-1" in unreachable.stderr
    usage = cli("account", "limits", source)
    assert usage.exit_code == 2 and "--lower-limit" in usage.stderr

    reserved = cli("reserve", source, "hold", "7.5", "--json")
    assert json.loads(reserved.stdout)["accounts"][0]["reservations"] == {"hold": "7.50"}
    shown = cli("account", "show", source)
    assert "7.50  (hold=7.50)" in shown.stdout
    assert cli("release", source, "hold", "2.5").exit_code == 0
    assert cli("release", source, "hold").exit_code == 0
    assert cli("release", source, "hold").exit_code == 1
    assert available(client, source) == "87.50"


def test_cli_account_admin_commands(cli: Callable[..., object], client: Client) -> None:
    account_id, other = open_accounts(client, "0", "0")
    assert cli("account", "lock", account_id).exit_code == 0
    assert client.get_account(account_id).state == "LOCKED"
    assert cli("account", "lock", account_id).exit_code == 1
    assert cli("account", "unlock", account_id).exit_code == 0
    limits = cli("account", "limits", account_id, "--lower-limit", "-5", "--upper-limit", "50", "--json")
    view = json.loads(limits.stdout)["accounts"][0]
    assert (view["lower_limit"], view["upper_limit"]) == ("-5.00", "50.00")
    assert cli("account", "limits", account_id, "--no-upper-limit").exit_code == 0
    assert client.get_account(account_id).upper_limit is None
    table = cli("account", "show", account_id, other, new_id("nobody"))
    assert table.exit_code == 3 and "ACCOUNT_NOT_FOUND" in table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["ACCOUNT", account_id, other]
    assert cli("account", "delete", account_id).exit_code == 0
    assert client.get_account(account_id).state == "DELETED"


def test_cli_events_history_and_audit_head(cli: Callable[..., object], client: Client) -> None:
    source, target = open_accounts(client, "9", "0")
    moved = client.transfer(source, target, "4", "USD")
    listed = cli("events", "--from-seq", str(moved.seq), "--to-seq", str(moved.seq + 1))
    assert listed.exit_code == 0
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["SEQ", "TIME", "TYPE", "DEDUP_ID"]
    assert row.split()[0] == str(moved.seq) and moved.dedup_id in row and f"{target} 4.00" in row
    as_json = json.loads(cli("events", "--from-seq", str(moved.seq), "--limit", "1", "--json").stdout)
    assert [event["dedup_id"] for event in as_json] == [moved.dedup_id]

    history = cli("history", source)
    assert history.exit_code == 0
    lines = history.stdout.splitlines()
    assert lines[0].split()[:5] == ["SEQ", "TIME", "VERSION", "STATE", "AVAILABLE"]
    assert [line.split()[4] for line in lines[1:]] == ["0.00", "9.00", "5.00"]
    assert [v["version"] for v in json.loads(cli("history", source, "--from-seq", str(moved.seq), "--json").stdout)] == [3]

    head = cli("audit", "head")
    fields = dict(line.split() for line in head.stdout.splitlines())
    assert int(fields["seq"]) >= moved.seq and len(fields["hash"]) == 64
    assert json.loads(cli("audit", "head", "--json").stdout)["hash"] == client.audit_head().hash


def test_cli_api_key_from_option_or_environment(cli: Callable[..., object], keyed_server: CofferServer) -> None:
    refused = cli("audit", "head", url=keyed_server.url)
    assert refused.exit_code == 5 and refused.stderr.startswith("error: UNAUTHORIZED: ")
    assert cli("audit", "head", url=keyed_server.url, api_key=reader_key).exit_code == 0
    assert cli("audit", "head", "--api-key", reader_key, url=keyed_server.url).exit_code == 0
    forbidden = cli("account", "create", new_id(), "--asset", "USD", "--api-key", reader_key, url=keyed_server.url)
    assert forbidden.exit_code == 5 and forbidden.stderr.startswith("error: FORBIDDEN: ")


def test_cli_as_a_process_exits_with_the_documented_code(server: CofferServer) -> None:
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-c", "from coffer.cli import main; main()", "account", "show", new_id("nobody"), "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 3, finished.stderr
    assert finished.stderr.startswith("error: ACCOUNT_NOT_FOUND: ") and finished.stdout == ""
    assert time.monotonic() - started < 30
    assert "Exit codes:" in CliRunner().invoke(main, ["--help"]).stdout


# ------------------------------------------------------------------------------ contract defects


def test_cli_json_on_a_rejection_prints_the_error_as_json_on_stdout(cli: Callable[..., object], client: Client) -> None:
    source, target = open_accounts(client, "1", "0")
    rejected = cli("transfer", source, target, "5", "--asset", "USD", "--dedup-id", f"json-{source}", "--json")
    assert rejected.exit_code == 1
    error = json.loads(rejected.stdout)["error"]
    assert (error["code"], error["account_id"], error["status"], error["dedup_id"]) == ("LOWER_LIMIT_EXCEEDED", source, 409, f"json-{source}")
    assert rejected.stderr.startswith("error: LOWER_LIMIT_EXCEEDED: ")


def test_account_not_found_is_one_exit_code_for_every_command(cli: Callable[..., object], client: Client) -> None:
    (existing,) = open_accounts(client, "10")
    nobody = new_id("nobody")
    for arguments in [
        ("account", "show", nobody),
        ("history", nobody),
        ("transfer", existing, nobody, "1", "--asset", "USD"),
        ("transfer", nobody, existing, "1", "--asset", "USD"),
        ("reserve", nobody, "hold", "1"),
        ("release", nobody, "hold"),
        ("account", "lock", nobody),
        ("account", "limits", nobody, "--lower-limit", "-1"),
    ]:
        answer = cli(*arguments)
        assert answer.exit_code == 3 and answer.stderr.startswith("error: ACCOUNT_NOT_FOUND"), (arguments, answer.exit_code, answer.stderr)


def test_every_error_code_has_one_exit_code() -> None:
    from coffer.cli_node import exit_codes_by_error_code
    from coffer.core.errors import ErrorCode

    assert {code.value for code in ErrorCode} <= set(exit_codes_by_error_code)


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_one_string_of_comma_separated_urls_works_like_coffer_url(server: CofferServer, twin: str) -> None:
    urls = f"{dead_url()}, {server.url}"
    if twin == "sync":
        with Client(urls, retry=fast_retry) as api:
            assert api.urls == [urls.split(",")[0].strip(), server.url]
            assert api.healthz().status == "ok"
        return

    async def check() -> None:
        async with AsyncClient(urls, retry=fast_retry) as api:
            assert (await api.healthz()).status == "ok"

    asyncio.run(check())


def test_negative_amounts_on_the_command_line_are_values_not_options(cli: Callable[..., object], client: Client) -> None:
    source, target = open_accounts(client, "10", "0")
    negative = cli("transfer", source, target, "-5", "--asset", "USD")
    assert negative.exit_code == 2 and negative.stderr.startswith("error: INVALID_AMOUNT"), negative.stderr  # the server's answer
    limits = cli("account", "limits", source, "--lower-limit", "-2.50", "--json")
    assert json.loads(limits.stdout)["accounts"][0]["lower_limit"] == "-2.50"
    created = cli("account", "create", new_id(), "--asset", "USD", "--lower-limit", "-7", "--json")
    assert json.loads(created.stdout)["accounts"][0]["lower_limit"] == "-7.00"


def test_the_ids_dot_and_dot_dot_never_leave_the_client(cli: Callable[..., object]) -> None:
    with Client(dead_url(), retry=fast_retry) as api:  # a request sent would be a TransportError
        for account_id in (".", ".."):
            with pytest.raises(InvalidRequestError):
                api.get_account(account_id)
            with pytest.raises(InvalidRequestError):
                api.lock_account(account_id)
            with pytest.raises(InvalidRequestError):
                api.history(account_id)
    shown = cli("account", "show", "..", url=dead_url())
    assert shown.exit_code == 2 and "INVALID_REQUEST" in shown.stderr
