"""Real processes for the query tests: a node that serves the event feed, and ledger workloads.

:class:`FeedNode` is :class:`tests.service.server_process.CofferServer`: every node serves
``GET /v1/events/stream``, so the parent's ``coffer serve`` is all a feed needs.
"""

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx

from coffer.http.limits import commands_per_request_max
from coffer.query.projector import Projector
from coffer.query.sql_store import SqlStore
from tests.service.server_process import CofferServer

legs_per_batch_max = 1024  # the ledger's limit on the legs of one batch operation


class FeedNode(CofferServer):
    """A node the query tests follow through its event feed."""


@dataclass
class LoadedNode:
    """A running node and what the test loaded into it."""

    node: FeedNode
    account_ids: list[str]
    last_seq: int
    head_hash: str

    @property
    def url(self) -> str:
        return self.node.url


def project(url: str, store: SqlStore, until_seq: int) -> int:
    """Run a projector in this process until ``until_seq`` is stored."""
    return asyncio.run(Projector(url, store).run(until_seq))


def send(url: str, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST the commands in requests of at most 8190; every one must be applied (200)."""
    results: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for start in range(0, len(commands), commands_per_request_max):
            response = client.post("/v1/commands", json={"commands": commands[start : start + commands_per_request_max]})
            assert response.status_code == 200, response.text[:500]
            results.extend(response.json()["results"])
    failed = [result for result in results if result["status"] != 200]
    assert not failed, failed[:3]
    return results


def head(url: str) -> tuple[int, str]:
    """The node's chain head, once its event store holds it too (the feed serves stored events)."""
    answer = httpx.get(f"{url}/v1/audit/head", timeout=10.0).json()
    seq = int(answer["seq"])
    if seq > 0:
        # GET /v1/events waits for the node's event store to reach the asked range.
        stored = httpx.get(f"{url}/v1/events", params={"from_seq": seq, "to_seq": seq + 1}, timeout=10.0)
        assert stored.status_code == 200 and stored.json()["events"], stored.text
    return seq, answer["hash"]


def transfers_workload(
    prefix: str, account_count: int, command_count: int, seed: int = 1
) -> tuple[list[str], list[dict[str, Any]]]:
    """Accounts, funding batches, then random transfers: ``command_count`` commands, one event each."""
    rng = random.Random(seed)
    accounts = [f"{prefix}-{number:05d}" for number in range(account_count)]
    commands: list[dict[str, Any]] = [
        {"type": "create_account", "dedup_id": f"{prefix}-create-{account_id}", "account_id": account_id, "asset": "USD"}
        for account_id in accounts
    ]
    for start in range(0, account_count, legs_per_batch_max):
        legs = [
            {"account_id": account_id, "amount": "1000000", "asset": "USD"}
            for account_id in accounts[start : start + legs_per_batch_max]
        ]
        commands.append({"type": "batch_operation", "dedup_id": f"{prefix}-fund-{start}", "legs": legs})
    for number in range(command_count - len(commands)):
        source, target = rng.sample(accounts, 2)
        amount = f"{rng.randrange(1, 500)}.{rng.randrange(100):02d}"
        commands.append(
            {
                "type": "transfer",
                "dedup_id": f"{prefix}-transfer-{number}",
                "from_account_id": source,
                "to_account_id": target,
                "amount": amount,
                "asset": "USD",
            }
        )
    return accounts, commands


def mixed_workload(prefix: str, rounds: int = 20, seed: int = 2) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Every kind of event: accounts in two assets, deposits, withdrawals, transfers, reservations,
    TCC confirm and cancel, locks, limits, compensations, a deletion. Returns the account ids and
    the commands in steps (a step may depend on the one before it)."""
    rng = random.Random(seed)
    usd = [f"{prefix}-usd-{number}" for number in range(12)]
    btc = [f"{prefix}-btc-{number}" for number in range(6)]
    counter = iter(range(1_000_000))

    def dedup() -> str:
        return f"{prefix}-{next(counter)}"

    steps: list[list[dict[str, Any]]] = []
    creates = [{"type": "create_account", "dedup_id": dedup(), "account_id": account_id, "asset": "USD"} for account_id in usd]
    creates += [
        {"type": "create_account", "dedup_id": dedup(), "account_id": account_id, "asset": "BTC", "scale": 8}
        for account_id in btc
    ]
    creates.append({"type": "create_account", "dedup_id": dedup(), "account_id": f"{prefix}-gone", "asset": "USD"})
    steps.append(creates)
    steps.append(
        [
            {
                "type": "batch_operation",
                "dedup_id": dedup(),
                "legs": [{"account_id": a, "amount": "5000", "asset": "USD"} for a in usd],
            },
            {
                "type": "batch_operation",
                "dedup_id": dedup(),
                "legs": [{"account_id": a, "amount": "3.5", "asset": "BTC"} for a in btc],
            },
            {"type": "delete_account", "dedup_id": dedup(), "account_id": f"{prefix}-gone"},
        ]
    )
    for round_number in range(rounds):
        step: list[dict[str, Any]] = []
        for _ in range(10):
            source, target = rng.sample(usd, 2)
            step.append(
                {
                    "type": "transfer",
                    "dedup_id": dedup(),
                    "from_account_id": source,
                    "to_account_id": target,
                    "amount": f"{rng.randrange(1, 20)}.25",
                    "asset": "USD",
                }
            )
        source, target = rng.sample(btc, 2)
        step.append(
            {
                "type": "transfer",
                "dedup_id": dedup(),
                "from_account_id": source,
                "to_account_id": target,
                "amount": "0.00012345",
                "asset": "BTC",
            }
        )
        withdrawal = rng.choice(usd)
        step.append(
            {
                "type": "batch_operation",
                "dedup_id": dedup(),
                "legs": [{"account_id": withdrawal, "amount": "-1.10", "asset": "USD"}],
            }
        )
        reserving = rng.choice(usd)
        step.append(
            {
                "type": "reserve",
                "dedup_id": dedup(),
                "account_id": reserving,
                "reservation_id": f"r{round_number}",
                "amount": "7.00",
            }
        )
        step.append(
            {
                "type": "release",
                "dedup_id": dedup(),
                "account_id": reserving,
                "reservation_id": f"r{round_number}",
                "amount": "2.00",
            }
        )
        payer, payee = rng.sample(usd, 2)
        legs = [{"account_id": payer, "amount": "-3.00", "asset": "USD"}, {"account_id": payee, "amount": "3.00", "asset": "USD"}]
        step.append({"type": "tcc_try", "dedup_id": dedup(), "txn_id": f"{prefix}-ok-{round_number}", "legs": legs})
        step.append({"type": "tcc_try", "dedup_id": dedup(), "txn_id": f"{prefix}-no-{round_number}", "legs": legs})
        steps.append(step)
        compensated = step[0]["dedup_id"]
        steps.append(
            [
                {"type": "tcc_confirm", "dedup_id": dedup(), "txn_id": f"{prefix}-ok-{round_number}"},
                {"type": "tcc_cancel", "dedup_id": dedup(), "txn_id": f"{prefix}-no-{round_number}"},
                {"type": "compensate", "dedup_id": dedup(), "original_dedup_id": compensated},
                {"type": "lock_account", "dedup_id": dedup(), "account_id": btc[round_number % len(btc)]},
                {"type": "unlock_account", "dedup_id": dedup(), "account_id": btc[round_number % len(btc)]},
                {
                    "type": "update_limits",
                    "dedup_id": dedup(),
                    "account_id": usd[round_number % len(usd)],
                    "lower_limit": "0",
                    "upper_limit": "1000000",
                },
            ]
        )
    return [*usd, *btc, f"{prefix}-gone"], steps
