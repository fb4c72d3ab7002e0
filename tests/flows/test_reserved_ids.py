"""The ids a flow run derives for its commands stay the run's own: a run id, or a txn_id made from
params, may not start with a prefix the flows or the transaction layer derive theirs with."""

import asyncio

import pytest

from coffer.core.commands import reserved_id_prefixes, reserved_id_refusal
from coffer.flows.compiler import derived_dedup_id
from coffer.txn.coordinator import txn_id_of
from coffer.txn.stripes import stripe_id

from .conftest import Book

cancel_by_reference = {
    "description": "Cancel a hold named by the caller",
    "mode": "atomic",
    "params": {"reference": {"type": "text"}},
    "steps": [{"name": "cancel", "tcc_cancel": {"txn_id": "{reference}"}}],
}


def test_every_derived_id_starts_with_a_reserved_prefix() -> None:
    derived = [derived_dedup_id("order-7", "pay"), derived_dedup_id("x" * 128, "pay.undo"), txn_id_of("order-7", 3), f"{txn_id_of('order-7', 3)}.try"]
    derived.append(stripe_id("merchant-7", 0))  # a stripe's id, and the prefix of the steps that create it
    for identifier in derived:
        assert reserved_id_refusal("dedup_id", identifier) is not None, identifier
    assert {identifier[:3] for identifier in derived} == set(reserved_id_prefixes)
    assert reserved_id_refusal("dedup_id", "order-7") is None
    assert reserved_id_refusal("dedup_id", "flx:1") is None and reserved_id_refusal("dedup_id", "cx") is None


@pytest.mark.parametrize("run_id", ["fl:order-7:pay", "fh:abc", "cx:0:abc"])
def test_a_run_id_with_a_reserved_prefix_is_refused(book: Book, run_id: str) -> None:
    book.register("escrow_refund")
    applied = book.ledger.applied
    status, answer = asyncio.run(book.runner.run("escrow_refund", run_id, {"escrow_id": "e1"}))
    assert status == 422 and answer["error"]["code"] == "INVALID_REQUEST"
    assert f"dedup_id {run_id!r} starts with {run_id[:3]!r}" in answer["error"]["message"]
    assert run_id not in book.ledger.machine.flow_runs and book.ledger.applied == applied


def test_a_txn_id_made_from_params_may_not_take_a_transactions_id(book: Book) -> None:
    book.register("cancel_by_reference", cancel_by_reference)
    status, answer = asyncio.run(book.runner.run("cancel_by_reference", "c1", {"reference": "cx:0:abc"}))
    assert status == 422 and answer["error"]["code"] == "INVALID_REQUEST"
    assert "cancel: txn_id 'cx:0:abc' starts with 'cx:'" in answer["error"]["message"]
    assert "c1" not in book.ledger.machine.flow_runs
    status, answer = asyncio.run(book.runner.run("cancel_by_reference", "c2", {"reference": "hold-1"}))
    assert status == 409 and answer["error"]["code"] == "TXN_NOT_FOUND"  # an ordinary id goes through
