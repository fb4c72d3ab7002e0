"""The wide-integer fallback of :func:`coffer.core.encoding.encode` writes, part by part, exactly
the bytes a whole-value fallback (every value copied as builtins, wide integers as extensions)
writes: one value, one spelling, whichever way it is encoded."""

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from coffer.core import encoding
from coffer.core.accounts import Account
from coffer.core.commands import BatchBalanceOperation, CreateAccount, Leg, Transfer
from coffer.core.snapshot import restore_snapshot, snapshot_state, take_snapshot
from coffer.core.state_machine import StateMachine


def whole_value_fallback(value: object) -> bytes:
    """The reference: the whole value as builtins, wide integers widened, then encoded."""
    return encoding.encode_plain(encoding._widen(msgspec.to_builtins(value, builtin_types=(bytes,), order="deterministic")))


class Tagged(msgspec.Struct, array_like=True, tag="tagged"):
    amount: int
    legs: tuple[int, ...] = ()


class Untagged(msgspec.Struct, array_like=True):
    name: str
    values: dict[str, int]
    inner: Tagged | None = None


class Mapped(msgspec.Struct):  # a map-like struct: encoded whole, through builtins
    amount: int
    note: str = ""


wide = st.one_of(st.integers(min_value=2**64, max_value=2**127), st.integers(min_value=-(2**127), max_value=-(2**63) - 1))
integers = st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), wide)
# Keys beyond ASCII, in and above the basic plane: their order must be the one msgspec sorts by.
keys = st.text(alphabet=st.characters(codec="utf-8"), max_size=4)
leaves = st.one_of(integers, st.none(), st.booleans(), st.text(max_size=3), st.binary(max_size=3))
structs = st.builds(Tagged, integers, st.tuples(integers, integers)) | st.builds(Mapped, integers)
values = st.recursive(
    st.one_of(leaves, structs),
    lambda inner: st.one_of(
        st.lists(inner, max_size=40),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=40),
        st.builds(Untagged, st.text(max_size=3), st.dictionaries(keys, integers, max_size=30), st.none() | st.builds(Tagged, integers)),
    ),
    max_leaves=300,
)


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([1, 2, 3, 256]))
def test_the_part_wise_fallback_writes_the_bytes_of_the_whole_value_fallback(value: object, run_items: int) -> None:
    original = encoding._run_items
    encoding._run_items = run_items  # small runs exercise both the typed runs and the item-by-item path
    try:
        encoded = encoding.encode(value)
    finally:
        encoding._run_items = original
    assert encoded == whole_value_fallback(value)


def test_long_maps_and_arrays_take_the_headers_of_their_size() -> None:
    # 16 and 65,536 items switch to the 16-bit and 32-bit headers; one wide value forces the fallback.
    for length in (15, 16, 65_535, 65_536):
        mapping = {f"k{number:06d}": number for number in range(length)}
        mapping["k000007"] = 2**100
        assert encoding.encode(mapping) == whole_value_fallback(mapping)
        array = list(range(length))
        array[-1] = -(2**90)
        assert encoding.encode(array) == whole_value_fallback(array)


def test_a_snapshot_of_wide_balances_is_the_same_bytes_and_restores_the_same_state() -> None:
    machine = StateMachine()
    ids = [f"a{number}" for number in range(300)]
    machine.apply(1, 1_700_000_000_000, [CreateAccount(dedup_id=f"c-{account}", account_id=account, asset="USD") for account in ids])
    legs = tuple(Leg(account_id=account, amount=10**27, asset="USD") for account in ids)
    machine.apply(2, 1_700_000_000_000, [BatchBalanceOperation(dedup_id="fund", legs=legs)])
    transfers = [
        Transfer(dedup_id=f"t-{number}", from_account_id=ids[number % 300], to_account_id=ids[(number * 7 + 1) % 300],
                 amount=10**21 + number if number % 20 == 0 else number + 1, asset="USD")
        for number in range(2000)
    ]
    for start in range(0, len(transfers), 100):
        machine.apply(3 + start // 100, 1_700_000_000_000, transfers[start : start + 100])
    data = take_snapshot(machine)
    assert isinstance(machine.accounts[ids[0]], Account)
    assert data == whole_value_fallback(snapshot_state(machine))
    assert take_snapshot(restore_snapshot(data)) == data

