"""Account lifecycle rules: CreateAccount, UpdateLimits, Lock/Unlock, Delete, and the version counter."""

import pytest

from coffer.core.accounts import AccountState
from coffer.core.commands import metadata_keys_max
from coffer.core.errors import ErrorCode

from .conftest import (
    account_copy,
    apply_one,
    assert_ok,
    assert_rejected,
    batch,
    cancel,
    confirm,
    create,
    delete,
    leg,
    lock,
    release,
    reserve,
    tcc_try,
    transfer,
    unlock,
    update_limits,
)

# ---------------------------------------------------------------- CreateAccount


def test_create_account_has_version_1_and_the_documented_defaults(empty_machine) -> None:
    _, event = assert_ok(empty_machine, create("alice", "USD"))
    account = empty_machine.accounts["alice"]
    assert account.account_id == "alice"
    assert account.asset == "USD"
    assert account.scale == 2
    assert account.state == AccountState.NORMAL
    assert account.lower_limit == 0
    assert account.upper_limit is None
    assert account.available == 0
    assert account.reservations == {}
    assert account.pending_in == {}
    assert account.pending_out == {}
    assert account.version == 1
    assert account.metadata == {}
    assert event.accounts == (account,)


def test_create_account_keeps_scale_limits_and_metadata(empty_machine) -> None:
    command = create("w", "BTC", scale=8, lower_limit=-500, upper_limit=10**9, metadata={"owner": "w", "tier": "gold"})
    assert_ok(empty_machine, command)
    account = empty_machine.accounts["w"]
    assert (account.asset, account.scale, account.lower_limit, account.upper_limit) == ("BTC", 8, -500, 10**9)
    assert account.metadata == {"owner": "w", "tier": "gold"}
    assert account.version == 1


@pytest.mark.parametrize("scale", [0, 1, 2, 8, 18])
def test_create_account_accepts_every_scale_of_the_contract(empty_machine, scale: int) -> None:
    assert_ok(empty_machine, create("a", f"ASSET{scale}", scale=scale))
    assert empty_machine.accounts["a"].scale == scale


@pytest.mark.parametrize("account_id", ["a", "A-Za-z0-9._:-", "x" * 128, "user:42.wallet_main-1"])
def test_create_account_accepts_ids_of_the_contract(empty_machine, account_id: str) -> None:
    assert_ok(empty_machine, create(account_id))
    assert empty_machine.accounts[account_id].account_id == account_id


def test_create_account_rejects_an_existing_id(machine) -> None:
    before = account_copy(machine, "alice")
    assert_rejected(machine, create("alice", "USD"), ErrorCode.ACCOUNT_EXISTS, "alice")
    assert machine.accounts["alice"] == before


def test_create_account_rejects_the_id_of_a_deleted_account(machine) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, create("carol", "USD"), ErrorCode.ACCOUNT_EXISTS, "carol")
    assert machine.accounts["carol"].state == AccountState.DELETED


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"account_id": ""}, id="empty-id"),
        pytest.param({"account_id": "x" * 129}, id="id-too-long"),
        pytest.param({"account_id": "a b"}, id="id-space"),
        pytest.param({"account_id": "a/b"}, id="id-slash"),
        pytest.param({"account_id": "ünï"}, id="id-non-ascii"),
        pytest.param({"account_id": "a\n"}, id="id-newline"),
        pytest.param({"asset": ""}, id="empty-asset"),
        pytest.param({"asset": "U S D"}, id="asset-space"),
        pytest.param({"asset": "US$"}, id="asset-dollar"),
        pytest.param({"scale": -1}, id="scale-negative"),
        pytest.param({"scale": 19}, id="scale-19"),
        pytest.param({"metadata": {"k": 1}}, id="metadata-int-value"),
        pytest.param({"metadata": {1: "v"}}, id="metadata-int-key"),
        pytest.param({"metadata": {"k": 1.5}}, id="metadata-float-value"),
        pytest.param({"metadata": ["k", "v"]}, id="metadata-not-a-map"),
        pytest.param({"metadata": {f"k{i}": "v" for i in range(metadata_keys_max + 1)}}, id="metadata-too-many-keys"),
    ],
)
def test_create_account_rejects_malformed_fields_as_invalid_request(empty_machine, fields: dict) -> None:
    values = {"account_id": "acc", "asset": "USD", "scale": 2} | fields
    account_id = values.pop("account_id")
    asset = values.pop("asset")
    assert_rejected(empty_machine, create(account_id, asset, **values), ErrorCode.INVALID_REQUEST)
    assert empty_machine.accounts == {}


def test_create_account_rejects_another_scale_for_a_known_asset(machine) -> None:
    assert_rejected(machine, create("dave", "USD", scale=8), ErrorCode.ASSET_MISMATCH, "dave")
    assert "dave" not in machine.accounts
    assert_ok(machine, create("dave", "USD", scale=2))


def test_asset_scale_is_fixed_by_an_existing_deleted_account(empty_machine) -> None:
    assert_ok(empty_machine, create("a", "PTS", scale=0))
    assert_ok(empty_machine, delete("a"))
    assert_rejected(empty_machine, create("b", "PTS", scale=2), ErrorCode.ASSET_MISMATCH, "b")


def test_a_rejected_account_does_not_fix_the_asset_scale(empty_machine) -> None:
    assert_rejected(empty_machine, create("a", "GEM", scale=4, lower_limit=1), ErrorCode.LOWER_LIMIT_EXCEEDED)
    assert_ok(empty_machine, create("b", "GEM", scale=6))
    assert empty_machine.accounts["b"].scale == 6


@pytest.mark.parametrize(
    ("lower", "upper", "code"),
    [
        (1, None, ErrorCode.LOWER_LIMIT_EXCEEDED),
        (100, 1000, ErrorCode.LOWER_LIMIT_EXCEEDED),
        (0, -1, ErrorCode.UPPER_LIMIT_EXCEEDED),
        (-100, -1, ErrorCode.UPPER_LIMIT_EXCEEDED),
    ],
)
def test_create_account_rejects_limits_that_balance_zero_breaks(empty_machine, lower: int, upper: int | None, code) -> None:
    assert_rejected(empty_machine, create("a", lower_limit=lower, upper_limit=upper), code, "a")
    assert "a" not in empty_machine.accounts


@pytest.mark.parametrize(("lower", "upper"), [(0, 0), (0, None), (-100, 0), (-100, None), (0, 1)])
def test_create_account_accepts_limits_that_balance_zero_meets(empty_machine, lower: int, upper: int | None) -> None:
    assert_ok(empty_machine, create("a", lower_limit=lower, upper_limit=upper))
    assert (empty_machine.accounts["a"].lower_limit, empty_machine.accounts["a"].upper_limit) == (lower, upper)


# ---------------------------------------------------------------- UpdateLimits


def test_update_limits_sets_both_limits_and_bumps_the_version(machine) -> None:
    _, event = assert_ok(machine, update_limits("alice", -5_000, 50_000))
    alice = machine.accounts["alice"]
    assert (alice.lower_limit, alice.upper_limit, alice.version) == (-5_000, 50_000, 3)
    assert event.accounts == (alice,)
    assert_ok(machine, update_limits("alice", 0, None))
    assert (alice.lower_limit, alice.upper_limit, alice.version) == (0, None, 4)


def test_update_limits_bounds_are_inclusive(machine) -> None:
    assert_ok(machine, update_limits("alice", 10_000, 10_000))  # available == lower == upper


def test_update_limits_rejects_a_lower_limit_above_available(machine) -> None:
    assert_rejected(machine, update_limits("alice", 10_001, None), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")


def test_update_limits_lower_is_checked_against_available_only(machine) -> None:
    # 100.00 of which 40.00 reserved: available is 60.00, and a reservation is not available money.
    assert_ok(machine, reserve("alice", "r1", 4_000))
    assert_rejected(machine, update_limits("alice", 6_001, None), ErrorCode.LOWER_LIMIT_EXCEEDED, "alice")
    assert_ok(machine, update_limits("alice", 6_000, None))


def test_update_limits_rejects_an_upper_limit_below_available(machine) -> None:
    assert_rejected(machine, update_limits("alice", 0, 9_999), ErrorCode.UPPER_LIMIT_EXCEEDED, "alice")


def test_update_limits_upper_counts_reservations_and_pending_entries(machine) -> None:
    # alice: available 60.00, reserved 10.00, pending_out 20.00 (t1), pending_in 10.00 (t2): total 100.00
    assert_ok(machine, reserve("alice", "r1", 1_000))
    assert_ok(machine, tcc_try("t1", leg("alice", -2_000)))
    assert_ok(machine, tcc_try("t2", leg("alice", 1_000)))
    alice = machine.accounts["alice"]
    assert (alice.available, alice.reservations, alice.pending_out, alice.pending_in) == (
        7_000,
        {"r1": 1_000},
        {"t1": 2_000},
        {"t2": 1_000},
    )
    assert_rejected(machine, update_limits("alice", 0, 10_999), ErrorCode.UPPER_LIMIT_EXCEEDED, "alice")
    assert_ok(machine, update_limits("alice", 0, 11_000))


def test_update_limits_is_allowed_on_a_locked_account(machine) -> None:
    assert_ok(machine, lock("alice"))
    assert_ok(machine, update_limits("alice", -100, 20_000))
    assert machine.accounts["alice"].state == AccountState.LOCKED
    assert (machine.accounts["alice"].lower_limit, machine.accounts["alice"].upper_limit) == (-100, 20_000)


def test_update_limits_on_a_deleted_account_is_rejected(machine) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, update_limits("carol", 0, 100), ErrorCode.ACCOUNT_DELETED, "carol")


def test_update_limits_on_a_missing_account_is_rejected(machine) -> None:
    assert_rejected(machine, update_limits("nobody", 0, 100), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")


# ---------------------------------------------------------------- Lock / Unlock


def test_lock_and_unlock_switch_the_state_and_bump_the_version(machine) -> None:
    _, event = assert_ok(machine, lock("alice"))
    assert machine.accounts["alice"].state == AccountState.LOCKED
    assert machine.accounts["alice"].version == 3
    assert event.accounts[0].state == AccountState.LOCKED
    assert_ok(machine, unlock("alice"))
    assert machine.accounts["alice"].state == AccountState.NORMAL
    assert machine.accounts["alice"].version == 4


def test_lock_of_a_locked_account_is_an_invalid_transition(machine) -> None:
    assert_ok(machine, lock("alice"))
    assert_rejected(machine, lock("alice"), ErrorCode.INVALID_STATE_TRANSITION, "alice")


def test_unlock_of_a_normal_account_is_an_invalid_transition(machine) -> None:
    assert_rejected(machine, unlock("alice"), ErrorCode.INVALID_STATE_TRANSITION, "alice")


@pytest.mark.parametrize("command", [lock, unlock, delete])
def test_state_commands_on_a_deleted_account_are_rejected(machine, command) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, command("carol"), ErrorCode.ACCOUNT_DELETED, "carol")


@pytest.mark.parametrize("command", [lock, unlock, delete])
def test_state_commands_on_a_missing_account_are_rejected(machine, command) -> None:
    assert_rejected(machine, command("nobody"), ErrorCode.ACCOUNT_NOT_FOUND, "nobody")


# ---------------------------------------------------------------- Delete


def test_delete_an_empty_account(machine) -> None:
    _, event = assert_ok(machine, delete("carol"))
    carol = machine.accounts["carol"]
    assert carol.state == AccountState.DELETED
    assert carol.version == 2
    assert event.accounts == (carol,)


def test_deleted_account_stays_readable_with_its_history_fields(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 700))
    assert_ok(machine, transfer("carol", "alice", 700))
    assert_ok(machine, delete("carol"))
    carol = machine.accounts["carol"]
    assert (carol.account_id, carol.asset, carol.scale, carol.state, carol.available, carol.version) == (
        "carol",
        "USD",
        2,
        AccountState.DELETED,
        0,
        4,
    )


def _hold_money(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 1))


def _hold_negative_money(machine) -> None:
    assert_ok(machine, update_limits("carol", -100, None))
    assert_ok(machine, transfer("carol", "alice", 1))


def _hold_reservation(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 1))
    assert_ok(machine, reserve("carol", "r", 1))
    assert machine.accounts["carol"].available == 0


def _hold_pending_in(machine) -> None:
    assert_ok(machine, tcc_try("t-in", leg("carol", 1)))
    assert machine.accounts["carol"].available == 0


def _hold_pending_out(machine) -> None:
    assert_ok(machine, transfer("alice", "carol", 1))
    assert_ok(machine, tcc_try("t-out", leg("carol", -1)))
    assert machine.accounts["carol"].available == 0


@pytest.mark.parametrize("hold", [_hold_money, _hold_negative_money, _hold_reservation, _hold_pending_in, _hold_pending_out])
def test_delete_is_rejected_while_anything_is_left(machine, hold) -> None:
    hold(machine)
    assert_rejected(machine, delete("carol"), ErrorCode.ACCOUNT_NOT_EMPTY, "carol")
    assert machine.accounts["carol"].state == AccountState.NORMAL


def test_delete_succeeds_once_the_holds_are_gone(machine) -> None:
    _hold_reservation(machine)
    assert_ok(machine, release("carol", "r"))
    assert_ok(machine, transfer("carol", "alice", 1))
    _hold_pending_in(machine)
    assert_ok(machine, cancel("t-in"))
    assert_ok(machine, delete("carol"))


def test_a_deleted_account_stays_deleted_forever(machine) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, unlock("carol"), ErrorCode.ACCOUNT_DELETED, "carol")
    assert_rejected(machine, lock("carol"), ErrorCode.ACCOUNT_DELETED, "carol")
    assert machine.accounts["carol"].state == AccountState.DELETED


balance_operations_on_carol = [
    pytest.param(lambda: transfer("alice", "carol", 1), id="transfer-in"),
    pytest.param(lambda: transfer("carol", "alice", 1), id="transfer-out"),
    pytest.param(lambda: batch(leg("carol", 1)), id="batch-deposit"),
    pytest.param(lambda: batch(leg("alice", -1), leg("carol", 1)), id="batch-move"),
    pytest.param(lambda: reserve("carol", "r", 1), id="reserve"),
    pytest.param(lambda: release("carol", "r"), id="release"),
    pytest.param(lambda: tcc_try("t", leg("carol", 1)), id="tcc-try-in"),
    pytest.param(lambda: tcc_try("t", leg("alice", -1), leg("carol", 1)), id="tcc-try-move"),
]


@pytest.mark.parametrize("make_command", balance_operations_on_carol)
def test_every_balance_operation_on_a_deleted_account_is_rejected(machine, make_command) -> None:
    assert_ok(machine, delete("carol"))
    assert_rejected(machine, make_command(), ErrorCode.ACCOUNT_DELETED, "carol")


@pytest.mark.parametrize("make_command", balance_operations_on_carol)
def test_every_balance_operation_on_a_locked_account_is_rejected(machine, make_command) -> None:
    assert_ok(machine, lock("carol"))
    assert_rejected(machine, make_command(), ErrorCode.ACCOUNT_LOCKED, "carol")


def test_balance_operations_work_again_after_unlock(machine) -> None:
    assert_ok(machine, lock("carol"))
    assert_rejected(machine, transfer("alice", "carol", 1), ErrorCode.ACCOUNT_LOCKED, "carol")
    assert_ok(machine, unlock("carol"))
    assert_ok(machine, transfer("alice", "carol", 1))
    assert machine.accounts["carol"].available == 1


# ---------------------------------------------------------------- version


def test_version_grows_by_exactly_one_per_change(machine) -> None:
    """Every accepted command that changes alice bumps her version by one, whatever it touches."""
    steps = [
        update_limits("alice", -100, None),
        transfer("alice", "bob", 100),
        transfer("bob", "alice", 100),
        batch(leg("alice", -100), leg("alice", 30), leg("bob", 70)),  # two legs on alice: one change
        reserve("alice", "r", 100),
        reserve("alice", "r", 100),
        release("alice", "r", 50),
        release("alice", "r"),
        tcc_try("t1", leg("alice", -100), leg("alice", 40)),  # pending_out and pending_in: one change
        confirm("t1"),
        tcc_try("t2", leg("alice", -100)),
        cancel("t2"),
        lock("alice"),
        unlock("alice"),
    ]
    for command in steps:
        before = machine.accounts["alice"].version
        _, event = assert_ok(machine, command)
        assert machine.accounts["alice"].version == before + 1, command
        (in_event,) = [account for account in event.accounts if account.account_id == "alice"]
        assert in_event.version == before + 1


def test_version_does_not_move_on_rejections(machine) -> None:
    rejections = [
        (transfer("alice", "bob", 10**9), ErrorCode.LOWER_LIMIT_EXCEEDED),
        (reserve("alice", "r", 10**9), ErrorCode.LOWER_LIMIT_EXCEEDED),
        (release("alice", "nope"), ErrorCode.RESERVATION_NOT_FOUND),
        (unlock("alice"), ErrorCode.INVALID_STATE_TRANSITION),
        (update_limits("alice", 10**9, None), ErrorCode.LOWER_LIMIT_EXCEEDED),
        (delete("alice"), ErrorCode.ACCOUNT_NOT_EMPTY),
        (batch(leg("alice", -1), leg("nobody", 1)), ErrorCode.ACCOUNT_NOT_FOUND),
        (tcc_try("t", leg("alice", -(10**9))), ErrorCode.LOWER_LIMIT_EXCEEDED),
    ]
    for command, code in rejections:
        before = machine.accounts["alice"].version
        assert apply_one(machine, command).code == code
        assert machine.accounts["alice"].version == before
