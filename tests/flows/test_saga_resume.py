"""Saga runs interrupted at every boundary between two commands, then resumed.

The runner is killed (its ledger raises, as a process killed there would stop) after the k-th
command reached the log, for every k from "before the start record" to "before the finish
record", on a run that succeeds and on a run whose last step fails and is compensated. Then the
run is resumed — by the client's retry, or by the recovery task — with a fresh runner, and must
end exactly as the uninterrupted run: same outcome, same balances, and no command applied twice.
"""

import asyncio

import pytest

from coffer.flows.runner import FlowRunner

from .conftest import Book, Crashed

saga = {
    "mode": "saga",
    "description": "three steps: hold, pay, then pass some on",
    "params": {
        "alice": {"type": "account"},
        "bob": {"type": "account"},
        "carol": {"type": "account"},
        "amount": {"type": "amount", "asset": "USD"},
        "onward": {"type": "amount", "asset": "USD"},
    },
    "steps": [
        {"name": "hold", "reserve": {"account": "{alice}", "reservation_id": "saga-{run_id}", "amount": "amount"}, "compensation": "compensate"},
        {"name": "pay", "transfer": {"from": "{bob}", "to": "{alice}", "amount": "amount"}, "compensation": "compensate"},
        {
            "name": "pass_on",
            "batch_operation": {"balanced": True, "legs": [{"account": "{bob}", "debit": "onward"}, {"account": "{carol}", "credit": "onward"}]},
        },
    ],
}


def fresh() -> Book:
    book = Book()
    book.create("alice", balance="100")
    book.create("bob", balance="100")
    book.create("carol")
    book.register("three_steps", saga)
    return book


def params(onward: str) -> dict[str, str]:
    return {"alice": "alice", "bob": "bob", "carol": "carol", "amount": "30", "onward": onward}


def balances(book: Book) -> dict[str, tuple[int, dict[str, int]]]:
    return {key: (account.available, dict(account.reservations)) for key, account in book.ledger.machine.accounts.items()}


def applied_once(book: Book) -> None:
    """No dedup_id produced two events."""
    seen = [command.dedup_id for command in book.ledger.sent]
    results = [book.ledger.machine.dedup[dedup_id].result for dedup_id in set(seen)]
    assert all(result.seq or not result.ok for result in results)
    event_ids = [command.dedup_id for command in book.ledger.sent if book.ledger.machine.dedup[command.dedup_id].command == command]
    assert len(set(event_ids)) == len(set(seen))


def reference(onward: str) -> tuple[dict, dict, int]:
    book = fresh()
    before = book.ledger.applied
    _status, answer = asyncio.run(book.runner.run("three_steps", "run-1", params(onward)))
    return answer, balances(book), book.ledger.applied - before


@pytest.mark.parametrize("onward", ["20", "500"], ids=["succeeds", "compensates"])
@pytest.mark.parametrize("resume_by", ["retry", "recovery"])
def test_a_crash_between_any_two_commands_resumes_to_the_same_end(onward: str, resume_by: str) -> None:
    expected, expected_balances, commands = reference(onward)
    assert expected["status"] == ("SUCCEEDED" if onward == "20" else "COMPENSATED")
    for crash_at in range(commands):
        book = fresh()
        book.ledger.crash_after = book.ledger.applied + crash_at
        with pytest.raises(Crashed):
            asyncio.run(book.runner.run("three_steps", "run-1", params(onward)))
        book.ledger.crash_after = None
        runner = FlowRunner(book.ledger)  # a new process: nothing kept from the dead one
        if resume_by == "retry" or crash_at == 0:
            _, answer = asyncio.run(runner.run("three_steps", "run-1", params(onward)))
        else:
            book.ledger.time_ms += 10_000
            assert asyncio.run(runner.recover_once(now_ms=book.ledger.time_ms)) == 1
            _, answer = asyncio.run(runner.view("run-1"))
        assert answer == expected, f"crash after {crash_at} commands"
        assert balances(book) == expected_balances, f"crash after {crash_at} commands"
        applied_once(book)
        assert not book.ledger.machine.open_flow_runs


def test_recovery_leaves_young_runs_to_their_runner() -> None:
    book = fresh()
    book.ledger.crash_after = book.ledger.applied + 2  # the start record and the first step
    with pytest.raises(Crashed):
        asyncio.run(book.runner.run("three_steps", "run-1", params("20")))
    book.ledger.crash_after = None
    assert asyncio.run(book.runner.recover_once(now_ms=book.ledger.time_ms + 1_000)) == 0
    _status, answer = asyncio.run(book.runner.view("run-1"))
    assert answer["status"] == "RUNNING"
    assert asyncio.run(book.runner.recover_once(now_ms=book.ledger.time_ms + 6_000)) == 1
    assert asyncio.run(book.runner.view("run-1"))[1]["status"] == "SUCCEEDED"


def test_a_failed_compensation_stops_and_says_so() -> None:
    book = fresh()
    # Uninterrupted, the run compensates cleanly.
    status, answer = asyncio.run(book.runner.run("three_steps", "run-2", {**params("500"), "amount": "100"}))
    assert answer["status"] == "COMPENSATED"
    # Interrupted after its second step, bob's payment to alice is spent before the last step fails.
    book2 = fresh()
    book2.ledger.crash_after = book2.ledger.applied + 3  # start, hold, pay
    with pytest.raises(Crashed):
        asyncio.run(book2.runner.run("three_steps", "run-3", {**params("500"), "amount": "100"}))
    book2.ledger.crash_after = None
    book2.deposit("alice", "0.01")
    # alice spends the 100 that bob paid her (and her own) while the saga is stuck.
    ((status, spent),) = book2.ledger.apply(book2.ledger.command("transfer", {"dedup_id": "spend", "from_account_id": "alice", "to_account_id": "carol", "amount": "100.01", "asset": "USD"}))
    assert status == 200, spent
    status, answer = asyncio.run(FlowRunner(book2.ledger).run("three_steps", "run-3", {**params("500"), "amount": "100"}))
    assert status == 409 and answer["status"] == "COMPENSATION_FAILED", answer
    assert answer["compensations"][0]["name"] == "pay" and answer["compensations"][0]["error"]["code"] == "LOWER_LIMIT_EXCEEDED"
    assert len(answer["compensations"]) == 1  # it stops: the hold stays for an operator
