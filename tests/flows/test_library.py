"""Every flow of the shipped library, run against a real state machine: amounts, fees, rounding,
checks, exactly-once retries, and money conservation per asset."""

import asyncio

from .conftest import Book


def run(book: Book, name: str, dedup_id: str, **params):
    return asyncio.run(book.runner.run(name, dedup_id, params))


def test_top_up(book: Book) -> None:
    book.create("bank", lower="-1000000")
    book.create("alice")
    book.register("top_up")
    status, answer = run(book, "top_up", "t1", settlement="bank", wallet="alice", asset="USD", amount="25.5", reference="wire 7")
    assert status == 200 and answer["status"] == "SUCCEEDED", answer
    assert (book.available("alice"), book.available("bank")) == (2550, -2550)
    (step,) = answer["steps"]
    assert step["command"]["legs"][1] == {"account_id": "alice", "amount": "25.50", "asset": "USD", "metadata": {"reference": "wire 7"}}
    assert step["command"]["dedup_id"] == "fl:t1:top_up"
    assert answer["params"]["amount"] == "25.50"
    # The retry answers the recorded outcome and moves nothing.
    assert run(book, "top_up", "t1", settlement="bank", wallet="alice", asset="USD", amount="25.50", reference="wire 7") == (200, answer)
    assert book.available("alice") == 2550
    # Same run id, other params: refused.
    status, again = run(book, "top_up", "t1", settlement="bank", wallet="alice", asset="USD", amount="1", reference="wire 7")
    assert status == 409 and again["error"]["code"] == "DEDUP_ID_REUSED"
    status, zero = run(book, "top_up", "t2", settlement="bank", wallet="alice", asset="USD", amount="0")
    assert status == 422 and zero["error"]["code"] == "FLOW_CHECK_FAILED"
    status, bad = run(book, "top_up", "t3", settlement="bank", wallet="alice", asset="USD", amount="1.005")
    assert status == 422 and "more than 2 decimals" in bad["error"]["message"]


def test_payment_with_percentage_fee_and_minimum(book: Book) -> None:
    for account_id, balance in (("payer", "1000"), ("shop", None), ("fees", None)):
        book.create(account_id, balance=balance)
    book.register("payment_with_fee")
    before = book.money("USD")
    status, answer = run(book, "payment_with_fee", "p1", payer="payer", merchant="shop", fee_account="fees", asset="USD", amount="100.50")
    assert status == 200, answer
    assert answer["computed"] == {"fee": "2.91", "net": "97.59"}  # 2.9% of 100.50 = 2.9145, half up
    assert (book.available("payer"), book.available("shop"), book.available("fees")) == (100_000 - 10_050, 9_759, 291)
    # The minimum fee wins on a small payment.
    status, small = run(book, "payment_with_fee", "p2", payer="payer", merchant="shop", fee_account="fees", asset="USD", amount="5")
    assert status == 200 and small["computed"] == {"fee": "0.30", "net": "4.70"}
    # A payment no larger than the fee is refused by the flow's check; nothing is recorded.
    status, tiny = run(book, "payment_with_fee", "p3", payer="payer", merchant="shop", fee_account="fees", asset="USD", amount="0.30")
    assert status == 422 and tiny["error"]["code"] == "FLOW_CHECK_FAILED"
    assert "p3" not in book.ledger.machine.flow_runs
    # A payer without the money: the ledger's rejection is the run's, and nothing moved.
    status, poor = run(book, "payment_with_fee", "p4", payer="payer", merchant="shop", fee_account="fees", asset="USD", amount="5000")
    assert status == 409 and poor["status"] == "FAILED" and poor["error"]["code"] == "LOWER_LIMIT_EXCEEDED"
    assert book.money("USD") == before


def test_partial_refund(book: Book) -> None:
    book.create("customer")
    book.create("shop", balance="100")
    book.create("fees", balance="10")
    book.register("partial_refund")
    params = {"customer": "customer", "merchant": "shop", "fee_account": "fees", "asset": "USD", "original_amount": "100.00", "original_fee": "2.90"}
    status, answer = run(book, "partial_refund", "r1", amount="33.33", **params)
    assert status == 200, answer
    # 2.90 * 33.33 / 100 = 0.96657, rounded down: 0.96 from the fees, 32.37 from the shop.
    assert answer["computed"] == {"fee_back": "0.96", "merchant_part": "32.37"}
    assert (book.available("customer"), book.available("shop"), book.available("fees")) == (3333, 10_000 - 3237, 1000 - 96)
    status, over = run(book, "partial_refund", "r2", amount="100.01", **params)
    assert status == 422 and over["error"]["code"] == "FLOW_CHECK_FAILED"


def test_currency_conversion_through_fx_accounts(book: Book) -> None:
    book.create("alice-usd", balance="500")
    book.create("alice-btc", asset="BTC", scale=8)
    book.create("fx-usd")
    book.create("fx-btc", asset="BTC", scale=8, balance="10")
    book.register("currency_conversion")
    usd, btc = book.money("USD"), book.money("BTC")
    params = {"source": "alice-usd", "target": "alice-btc", "fx_source": "fx-usd", "fx_target": "fx-btc", "source_asset": "USD", "target_asset": "BTC"}
    status, answer = run(book, "currency_conversion", "c1", amount="250.00", rate="0.0000161234", **params)
    assert status == 200, answer
    # 250 * 0.0000161234 = 0.004030850 BTC, rounded down to 8 decimals.
    assert answer["computed"] == {"converted": "0.00403085"}
    assert (book.available("alice-usd"), book.available("fx-usd")) == (25_000, 25_000)
    assert (book.available("alice-btc"), book.available("fx-btc")) == (403_085, 10**9 - 403_085)
    assert (book.money("USD"), book.money("BTC")) == (usd, btc)  # each asset balances
    status, dust = run(book, "currency_conversion", "c2", amount="0.01", rate="0.00000001", **params)
    assert status == 422 and dust["error"]["code"] == "FLOW_CHECK_FAILED"


def test_withdrawal_reserve_then_settle_or_release(book: Book) -> None:
    book.create("alice", balance="100")
    book.create("bank", lower="-1000000")
    for name in ("withdrawal_reserve", "withdrawal_settle", "withdrawal_release"):
        book.register(name)
    before = book.money("USD")
    status, held = run(book, "withdrawal_reserve", "w1", wallet="alice", asset="USD", amount="40", withdrawal_id="42")
    assert status == 200, held
    alice = book.ledger.machine.accounts["alice"]
    assert alice.available == 6_000 and alice.reservations == {"wd:42": 4_000}
    settle = {"wallet": "alice", "settlement": "bank", "asset": "USD", "withdrawal_id": "42"}
    # Part of it is paid out first; the rest stays reserved.
    status, part = run(book, "withdrawal_settle", "w1-settle-a", amount="15", **settle)
    assert status == 200 and [step["name"] for step in part["steps"]] == ["unfreeze", "pay_out"], part
    assert book.ledger.machine.accounts["alice"].reservations == {"wd:42": 2_500} and book.available("bank") == 1_500
    status, _ = run(book, "withdrawal_settle", "w1-settle-b", amount="25", **settle)
    assert status == 200 and not book.ledger.machine.accounts["alice"].reservations
    assert (book.available("alice"), book.available("bank")) == (6_000, 4_000)
    # Settling again (a new run) finds no reservation: it fails and moves nothing - never paid twice.
    status, again = run(book, "withdrawal_settle", "w1-settle-c", amount="25", **settle)
    assert status == 409 and again["status"] == "FAILED" and again["error"]["code"] == "RESERVATION_NOT_FOUND"
    assert book.available("bank") == 4_000
    # A second withdrawal is released instead: the money is free again.
    run(book, "withdrawal_reserve", "w2", wallet="alice", asset="USD", amount="10", withdrawal_id="43")
    status, _ = run(book, "withdrawal_release", "w2-release", wallet="alice", withdrawal_id="43")
    assert status == 200 and book.available("alice") == 6_000 and not book.ledger.machine.accounts["alice"].reservations
    assert book.money("USD") == before


def test_withdrawal_settle_refused_puts_the_reservation_back(book: Book) -> None:
    book.create("alice", balance="100")
    book.create("bank")  # no negative lower limit, and an upper limit below the payout
    ((status, _),) = book.ledger.apply(book.ledger.command("update_limits", {"dedup_id": "cap-bank", "account_id": "bank", "upper_limit": "5"}))
    assert status == 200
    for name in ("withdrawal_reserve", "withdrawal_settle"):
        book.register(name)
    run(book, "withdrawal_reserve", "w1", wallet="alice", asset="USD", amount="40", withdrawal_id="9")
    status, answer = run(book, "withdrawal_settle", "w1-settle", wallet="alice", settlement="bank", asset="USD", amount="40", withdrawal_id="9")
    assert status == 409 and answer["status"] == "COMPENSATED" and answer["error"]["code"] == "UPPER_LIMIT_EXCEEDED"
    assert [(c["name"], c["type"], c["status"]) for c in answer["compensations"]] == [("unfreeze", "reserve", 200)]
    assert book.ledger.machine.accounts["alice"].reservations == {"wd:9": 4_000} and book.available("alice") == 6_000


def test_escrow_release_refund_and_expiry(book: Book) -> None:
    book.create("buyer", balance="100")
    book.create("seller")
    book.create("platform")
    for name in ("escrow_open", "escrow_release", "escrow_refund"):
        book.register(name)
    before = book.money("USD")
    deal = {"buyer": "buyer", "seller": "seller", "fee_account": "platform", "asset": "USD", "expiry_s": 3600}
    status, opened = run(book, "escrow_open", "e1", amount="50", escrow_id="e1", **deal)
    assert status == 200 and opened["computed"] == {"fee": "0.50", "proceeds": "49.50"}, opened
    assert book.ledger.machine.accounts["buyer"].pending_out == {"escrow:e1": 5_000}
    assert book.ledger.machine.accounts["seller"].pending_in == {"escrow:e1": 4_950}
    status, released = run(book, "escrow_release", "e1-release", escrow_id="e1")
    assert status == 200 and released["status"] == "SUCCEEDED", released
    assert (book.available("buyer"), book.available("seller"), book.available("platform")) == (5_000, 4_950, 50)
    # Releasing again changes nothing: the money moved once.
    status, _ = run(book, "escrow_release", "e1-release-again", escrow_id="e1")
    assert status == 200 and (book.available("seller"), book.available("platform")) == (4_950, 50)
    assert book.money("USD") == before
    # An escrow that expires gives the money back by itself (log time); a late release is refused.
    run(book, "escrow_open", "e2", amount="20", escrow_id="e2", **{**deal, "expiry_s": 60})
    book.ledger.time_ms += 61_000
    status, late = run(book, "escrow_release", "e2-release", escrow_id="e2")
    assert status == 409 and late["error"]["code"] == "TXN_ALREADY_CANCELLED"
    assert (book.available("buyer"), book.available("seller")) == (5_000, 4_950)
    # A refund before the release.
    run(book, "escrow_open", "e3", amount="10", escrow_id="e3", **deal)
    status, _ = run(book, "escrow_refund", "e3-refund", escrow_id="e3")
    assert status == 200 and book.available("buyer") == 5_000 and not book.ledger.machine.accounts["seller"].pending_in


def test_dry_run_shows_the_commands_and_applies_nothing(book: Book) -> None:
    book.create("payer", balance="100")
    book.create("shop")
    book.create("fees")
    book.register("payment_with_fee")
    seq = book.ledger.machine.seq
    status, answer = asyncio.run(
        book.runner.run("payment_with_fee", "d1", {"payer": "payer", "merchant": "shop", "fee_account": "fees", "asset": "USD", "amount": "10"}, dry_run=True)
    )
    assert status == 200 and answer["dry_run"] and answer["status"] == "DRY_RUN"
    legs = answer["steps"][0]["command"]["legs"]
    assert [leg["amount"] for leg in legs] == ["-10.00", "9.70", "0.30"]
    assert book.ledger.machine.seq == seq and "d1" not in book.ledger.machine.flow_runs



def test_a_text_param_is_printed_as_given_never_substituted_again(book: Book) -> None:
    noted = {
        "mode": "atomic",
        "params": {"note": {"type": "text"}, "payer": {"type": "account"}, "payee": {"type": "account"}, "amount": {"type": "amount", "asset": "USD"}},
        "steps": [{"name": "pay", "transfer": {"from": "{payer}", "to": "{payee}", "amount": "amount", "metadata": {"note": "{note} by {payer}"}}}],
    }
    book.create("alice", balance="10")
    book.create("bob")
    book.register("noted", noted)
    status, answer = run(book, "noted", "n-braces", note="{payer}", payer="alice", payee="bob", amount="1")
    assert status == 200, answer
    assert answer["steps"][0]["command"]["metadata"] == {"note": "{payer} by alice"}
