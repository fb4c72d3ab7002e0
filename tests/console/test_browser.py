"""The console and the API docs in a real headless Chromium, against a real node with keys.

Each test signs in as a person would (typing a key), and fails on any error the page logs or
throws. Screenshots of every view go to the test's temporary directory.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coffer.client import Client, Leg
from tests.console.conftest import keys
from tests.service.server_process import CofferServer

wait_ms = 15_000  # the longest any page may take to show what a test waits for, on a loaded machine


@dataclass
class Session:
    page: Any
    errors: list[str] = field(default_factory=list)
    shots: Path | None = None

    def go(self, node: CofferServer, fragment: str) -> None:
        self.page.goto(f"{node.url}/console{fragment}")

    def shot(self, name: str) -> None:
        assert self.shots is not None
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def no_errors(self) -> None:
        assert self.errors == []
        notice = self.page.locator("#notice")
        if notice.is_visible():
            assert "error" not in (notice.get_attribute("class") or ""), notice.inner_text()


@pytest.fixture(scope="module")
def ledger(keyed_node: CofferServer) -> CofferServer:
    """Accounts with money and history, and open two-phase tries for the console to act on."""
    with Client(keyed_node.url, api_key=keys["admin"]) as client:
        for account_id in ("con-alice", "con-alfred", "con-bob"):
            client.create_account(account_id, "USD", metadata={"owner": account_id.removeprefix("con-")})
        client.batch_operation([Leg(account_id="con-alice", amount="500.00", asset="USD")])
        for amount in ("25.50", "10", "4.50"):
            client.transfer("con-alice", "con-bob", amount, "USD")
        client.reserve("con-alice", "order-7", "20")
        for txn_id in ("con-txn-cancel", "con-txn-reader"):
            client.tcc_try(txn_id, [Leg(account_id="con-alice", amount="-5", asset="USD"), Leg(account_id="con-bob", amount="5", asset="USD")])
    return keyed_node


@pytest.fixture
def signed_in(chromium: Any, ledger: CofferServer, tmp_path: Path) -> Iterator[Any]:
    """``signed_in(role)``: a new tab on the console, signed in with that role's key."""
    sessions: list[Session] = []

    def open_as(role: str) -> Session:
        page = chromium.new_page()
        session = Session(page, shots=tmp_path)
        page.on("console", lambda message: session.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: session.errors.append(f"uncaught: {error}"))
        session.go(ledger, "#/")
        page.fill("#api-key", keys[role])
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector(f"#who:has-text('{role}')", timeout=wait_ms)
        sessions.append(session)
        return session

    yield open_as
    for session in sessions:
        session.page.close()


def _api(node: CofferServer, path: str) -> Any:
    return httpx.get(node.url + path, headers={"x-api-key": keys["reader"]}, timeout=30).json()


def test_every_view_loads_without_an_error(signed_in: Any, ledger: CofferServer) -> None:
    session = signed_in("operator")
    page = session.page
    # The live charts draw a line once two readings of /metrics are apart (one every 2 s).
    with Client(ledger.url, api_key=keys["operator"]) as client:  # something to measure
        for _ in range(20):
            client.transfer("con-bob", "con-alfred", "0.01", "USD")
    for chart in ("#chart-throughput", "#chart-latency"):  # a line once it has two points
        page.wait_for_selector(f"{chart} path.chart-line[d*=L]", state="attached", timeout=wait_ms)
    assert page.inner_text("[data-testid=card-ready] .value") == "ready"
    session.shot("overview")

    session.go(ledger, "#/account/con-alice")
    page.wait_for_selector("#chart-balance path.chart-line", timeout=wait_ms)
    fields = page.inner_text("#account-fields")
    for expected in ("USD (scale 2)", "NORMAL", "430.00", "order-7: 20.00", "con-txn-cancel: 5.00", "owner: alice", "none"):
        assert expected in fields
    assert page.locator("#history-table tbody tr").count() == 8  # created, deposit, 3 transfers, reserve, 2 tries
    assert page.locator("#chart-balance circle.chart-point").count() >= 8
    session.shot("account")

    session.go(ledger, "#/events?type=transferred&account=con-alice")
    page.wait_for_selector("#events-table tbody tr", timeout=wait_ms)
    assert page.locator("#events-table tbody tr").count() == 3
    page.click("#verify-chain")
    page.wait_for_selector("#verdict-result", timeout=wait_ms)
    assert page.inner_text("#verdict-result") == "OK"
    assert page.inner_text("#head-hash") == _api(ledger, "/v1/audit/head")["hash"]
    session.shot("events")

    # An event's hash links to the event, whose previous hash links to the one before.
    page.locator("#events-table tbody tr").first.locator("td").last.locator("a").click()
    page.wait_for_selector("#event-hash", timeout=wait_ms)
    seq = int(page.url.rsplit("/", 1)[1])
    event = _api(ledger, f"/v1/events?from_seq={seq}&to_seq={seq + 1}")["events"][0]
    assert page.inner_text("#event-hash") == event["hash"] and event["type"] == "transferred"
    page.click(f"a:has-text('{event['prev_hash']}')")
    page.wait_for_selector(f"h1:has-text('Event {seq - 1}')", timeout=wait_ms)
    session.shot("event")

    session.go(ledger, "#/health")
    page.wait_for_selector("#lag-table tbody tr", timeout=wait_ms)
    assert "ready" in page.inner_text("#shards-table")
    session.shot("health")

    page.goto(f"{ledger.url}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=wait_ms)
    assert page.locator(".opblock").count() >= 30  # one block per operation of /openapi.json
    session.shot("docs")
    session.no_errors()


def test_search_finds_accounts_by_prefix(signed_in: Any, ledger: CofferServer) -> None:
    session = signed_in("reader")
    page = session.page
    page.fill("#quick-search input[name=prefix]", "con-al")
    page.click("#quick-search button")
    page.wait_for_selector("#account-results tbody tr", timeout=wait_ms)
    rows = page.locator("#account-results tbody tr")
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == ["con-alfred", "con-alice"]
    session.shot("search")
    page.fill("#search-prefix", "con-bob")
    page.click("#account-search button")
    page.wait_for_selector("text=Exact match", timeout=wait_ms)
    page.click("p:has-text('Exact match') a")
    page.wait_for_selector("#account-id:has-text('con-bob')", timeout=wait_ms)
    page.fill("#search-prefix", "no-such-") if page.locator("#search-prefix").count() else None
    session.go(ledger, "#/accounts?prefix=no-such-")
    page.wait_for_selector("#no-accounts", timeout=wait_ms)
    session.no_errors()


def test_an_operator_cancels_a_pending_tcc(signed_in: Any, ledger: CofferServer) -> None:
    session = signed_in("operator")
    page = session.page
    session.go(ledger, "#/transactions")
    row = page.locator("tr[data-txn=con-txn-cancel]")
    row.wait_for(timeout=wait_ms)
    session.shot("transactions-operator")
    row.locator("button[data-action=cancel]").click()
    row.locator("button[data-action=really-cancel]").click()
    page.wait_for_selector("#notice:has-text('cancel of con-txn-cancel: applied')", timeout=wait_ms)
    assert page.locator("tr[data-txn=con-txn-cancel]").count() == 0
    assert page.locator("tr[data-txn=con-txn-reader]").count() == 1
    assert _api(ledger, "/v1/transactions/con-txn-cancel")["state"] == "CANCELLED"
    assert "con-txn-cancel" not in _api(ledger, "/v1/accounts/con-alice")["pending_out"]
    session.shot("transactions-after-cancel")
    session.no_errors()


def test_a_reader_sees_no_action_and_the_node_refuses_one(signed_in: Any, ledger: CofferServer) -> None:
    session = signed_in("reader")
    page = session.page
    session.go(ledger, "#/transactions")
    row = page.locator("tr[data-txn=con-txn-reader]")
    row.wait_for(timeout=wait_ms)
    assert row.locator("button").count() == 0 and page.locator("th:has-text('actions')").count() == 0
    session.shot("transactions-reader")
    session.go(ledger, "#/account/con-alice")
    page.wait_for_selector("#account-fields", timeout=wait_ms)
    assert page.locator("#account-actions").count() == 0
    # What a hidden button would have sent, sent anyway from the page with the reader's key:
    answer = page.evaluate(
        """async (key) => {
            const response = await fetch('/v1/tcc/cancel', {method: 'POST', headers: {'X-API-Key': key, 'Content-Type': 'application/json'},
                                                         body: JSON.stringify({txn_id: 'con-txn-reader', dedup_id: 'reader-tries-to-cancel'})});
            return {status: response.status, body: await response.json()};
        }""",
        keys["reader"],
    )
    assert answer["status"] == 403 and answer["body"]["error"]["code"] == "FORBIDDEN"
    assert _api(ledger, "/v1/transactions/con-txn-reader")["state"] == "TRIED"
    assert [error for error in session.errors if "403" not in error] == []  # the refusal is the only error
    assert "error" not in (page.locator("#notice").get_attribute("class") or "")


def test_an_admin_locks_and_unlocks_an_account(signed_in: Any, ledger: CofferServer) -> None:
    session = signed_in("admin")
    page = session.page
    session.go(ledger, "#/account/con-alfred")
    page.click("#lock-account")
    page.wait_for_selector("#account-state:has-text('LOCKED')", timeout=wait_ms)
    assert _api(ledger, "/v1/accounts/con-alfred")["state"] == "LOCKED"
    page.click("#unlock-account")
    page.wait_for_selector("#account-state:has-text('NORMAL')", timeout=wait_ms)
    session.no_errors()


def test_a_wrong_key_is_refused_at_sign_in(chromium: Any, ledger: CofferServer) -> None:
    page = chromium.new_page()
    try:
        page.goto(f"{ledger.url}/console")
        page.fill("#api-key", "not-a-key-of-this-node")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#sign-in-error:has-text('not one of this node')", timeout=wait_ms)
        assert page.locator("#view").inner_text() == ""
    finally:
        page.close()
