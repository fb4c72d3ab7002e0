"""Definitions are validated when registered, with errors that say where and why."""

import copy

import pytest

from coffer.flows import definition
from coffer.flows.definition import FlowInvalid
from coffer.flows.files import DefinitionFileError, library, parse_definition

payment = library()["payment_with_fee"]


def broken(change) -> dict:
    fields = copy.deepcopy(payment)
    change(fields)
    return fields


def legs(fields: dict) -> list:
    return fields["steps"][0]["batch_operation"]["legs"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: legs(f)[1].update(credit="amount"), "steps[0].batch_operation: says balanced, but its legs in {asset} do not sum to zero"),
        (lambda f: legs(f)[0].update(account="{nobody}"), r"steps[0].batch_operation.legs[0].account: unknown name {nobody}"),
        (lambda f: legs(f)[2].update(credit="fee_pct"), "unknown name 'fee_pct'"),
        (lambda f: legs(f)[2].update(credit="fee_percent"), "is a number; an amount is needed here"),
        (lambda f: legs(f)[2].update(debit="fee"), "give exactly one of debit and credit"),
        (lambda f: f["computed"][0].update(rounding="bankers"), "definition: Invalid enum value 'bankers'"),
        (lambda f: f["params"].update(rate={"type": "float"}), "Invalid enum value 'float'"),
        (lambda f: f["params"]["amount"].pop("asset"), "params.amount: an amount param names its asset"),
        (lambda f: f.update(mode="atomic", steps=f["steps"] * 2), "an atomic flow has exactly one step"),
        (lambda f: f.update(code="import os"), "unknown field `code`"),
        (lambda f: f["checks"][0].update(expr="fee"), "a check is a condition"),
        (lambda f: f["computed"][1].update(expr="amount - fee_percent"), "mixes an amount of {asset} and a number"),
        (lambda f: f["computed"].insert(0, {"name": "x", "type": "amount", "asset": "{asset}", "expr": "net"}), "unknown name 'net'"),
        (lambda f: f["steps"][0].update(compensation="compensate"), "an atomic flow undoes nothing"),
        (lambda f: f["steps"][0].update(name="finish"), "reserved"),
        (lambda f: f["params"]["amount"].update(asset="{payer}"), "is not an asset param"),
    ],
)
def test_invalid_definitions_say_where(change, message: str) -> None:
    with pytest.raises(FlowInvalid) as caught:
        definition.load(broken(change))
    assert message in str(caught.value)


def test_a_saga_needs_compensations_and_compensable_steps() -> None:
    saga = {
        "mode": "saga",
        "params": {"a": {"type": "account"}, "b": {"type": "account"}, "x": {"type": "amount", "asset": "USD"}},
        "steps": [
            {"name": "one", "transfer": {"from": "{a}", "to": "{b}", "amount": "x"}},
            {"name": "two", "transfer": {"from": "{b}", "to": "{a}", "amount": "x"}},
        ],
    }
    with pytest.raises(FlowInvalid, match=r"steps\[0\].compensation: every step but the last needs one"):
        definition.load(saga)
    saga["steps"][0]["compensation"] = "compensate"
    definition.load(saga)
    saga["steps"][0] = {"name": "one", "tcc_confirm": {"txn_id": "t"}, "compensation": "compensate"}
    with pytest.raises(FlowInvalid, match="the core compensates only"):
        definition.load(saga)


def test_every_library_flow_validates_and_its_canonical_form_round_trips() -> None:
    for name, fields in library().items():
        flow = definition.load(fields)
        again = definition.load(flow.canonical)
        assert again.canonical == flow.canonical, name


def test_yaml_is_plain_data() -> None:
    with pytest.raises(DefinitionFileError, match="not YAML or JSON"):
        parse_definition(b"!!python/object/apply:os.system ['true']", "x")
    name, fields = parse_definition(b'{"name": "n", "mode": "atomic"}', "stem")
    assert (name, fields["mode"]) == ("n", "atomic")
    assert parse_definition(b"mode: atomic", "stem")[0] == "stem"
