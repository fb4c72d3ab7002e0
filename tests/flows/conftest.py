"""A flow runner against a real state machine in process, with crashes on demand.

:class:`MachineLedger` is the runner's :class:`~coffer.flows.runner.Ledger` over a
:class:`~coffer.core.state_machine.StateMachine`: every command goes through the same body
conversion as the HTTP edge and is applied as its own log entry. ``crash_after`` makes the ledger
fail (as a killed runner would stop) after that many commands have reached the log, so a test can
interrupt a run at every boundary and resume it with a fresh runner.
"""

import itertools
from typing import Any

import pytest

from coffer.core import commands as core
from coffer.core.state_machine import StateMachine
from coffer.flows import definition
from coffer.flows.files import library
from coffer.flows.runner import Answer, FlowRunner, StoredRun, StoredVersion
from coffer.http.views import rejection_body
from coffer.server import command_table
from coffer.server import requests as bodies

start_time_ms = 1_700_000_000_000


class Crashed(Exception):
    """The runner died here (the test resumes it with a new runner)."""


class MachineLedger:
    def __init__(self, machine: StateMachine | None = None) -> None:
        self.machine = machine or StateMachine()
        self.time_ms = start_time_ms
        self.crash_after: int | None = None
        self.applied = 0  # commands that reached the log
        self.sent: list[core.Command] = []

    def apply(self, *commands: core.Command) -> list[Answer]:
        if self.crash_after is not None and self.applied >= self.crash_after:
            raise Crashed(f"crashed after {self.applied} commands")
        results, _ = self.machine.apply(self.machine.log_index + 1, self.time_ms, list(commands))
        self.applied += len(commands)
        self.sent.extend(commands)
        answers: list[Answer] = []
        for result in results:
            answers.append((200, {"seq": result.seq}) if result.ok else (409, rejection_body(result)))
        return answers

    def scales_view(self) -> bodies.Scales:
        machine = self.machine

        def account_scale(account_id: str) -> tuple[str, int] | None:
            account = machine.accounts.get(account_id)
            return None if account is None else (account.asset, account.scale)

        return bodies.Scales(account_scale, machine.asset_scales.get)

    def command(self, kind: str, body: dict[str, Any]) -> core.Command:
        return command_table.to_command(kind, bodies.convert_body(command_table.routes_by_kind[kind].body_type, body), self.scales_view())

    async def flow_version(self, name: str, version: int | None) -> StoredVersion | None:
        versions = self.machine.flows.get(name)
        if not versions:
            return None
        version = len(versions) if version is None else version
        return StoredVersion(version, versions[version - 1].definition) if 1 <= version <= len(versions) else None

    async def run_record(self, run_id: str) -> StoredRun | None:
        run = self.machine.flow_runs.get(run_id)
        return None if run is None else StoredRun(run.run_id, run.flow, run.version, run.params, run.outcome, run.time_ms)

    async def open_runs(self, limit: int) -> list[StoredRun]:
        found = [await self.run_record(run_id) for run_id in list(self.machine.open_flow_runs)[:limit]]
        return [record for record in found if record is not None]

    async def scales(self, assets: list[str], accounts: list[str]) -> dict[str, int]:
        return {asset: self.machine.asset_scales[asset] for asset in assets if asset in self.machine.asset_scales}

    async def send(self, kind: str, body: dict[str, Any]) -> Answer:
        try:
            command = self.command(kind, body)
        except bodies.RequestError as error:
            return 422, {"error": {"code": error.code.value, "message": error.message}}
        (answer,) = self.apply(command)
        return answer

    async def start(self, run_id, flow, version, params, together):
        start = core.StartFlowRun(dedup_id=run_id, flow=flow, version=version, params=params)
        if together is None:
            (answer,) = self.apply(start)
            return answer, None
        started, first = self.apply(start, self.command(*together))
        return started, first

    async def finish(self, run_id: str, outcome: bytes) -> Answer:
        from coffer.flows.compiler import derived_dedup_id

        (answer,) = self.apply(core.FinishFlowRun(dedup_id=derived_dedup_id(run_id, "finish"), run_id=run_id, outcome=outcome))
        return answer


_ids = itertools.count(1)


class Book:
    """A ledger with accounts, flows registered from the library, and a runner."""

    def __init__(self) -> None:
        self.ledger = MachineLedger()
        self.runner = FlowRunner(self.ledger)

    def create(self, account_id: str, asset: str = "USD", scale: int = 2, lower: str = "0", balance: str | None = None) -> None:
        body = {"dedup_id": f"create-{account_id}", "account_id": account_id, "asset": asset, "scale": scale, "lower_limit": lower}
        ((status, answer),) = self.ledger.apply(self.ledger.command("create_account", body))
        assert status == 200, answer
        if balance is not None:
            self.deposit(account_id, balance, asset)

    def deposit(self, account_id: str, amount: str, asset: str = "USD") -> None:
        body = {"dedup_id": f"deposit-{next(_ids)}", "legs": [{"account_id": account_id, "amount": amount, "asset": asset}]}
        ((status, answer),) = self.ledger.apply(self.ledger.command("batch_operation", body))
        assert status == 200, answer

    def register(self, name: str, fields: dict[str, Any] | None = None) -> int:
        flow = definition.load(fields if fields is not None else library()[name])
        ((status, answer),) = self.ledger.apply(core.PutFlow(dedup_id=f"put-{name}-{next(_ids)}", name=name, definition=flow.canonical))
        assert status == 200, answer
        return len(self.ledger.machine.flows[name])

    def available(self, account_id: str) -> int:
        return self.ledger.machine.accounts[account_id].available

    def money(self, asset: str) -> int:
        """available + reserved + pending_out over the asset's accounts (invariant 1's sum)."""
        total = 0
        for account in self.ledger.machine.accounts.values():
            if account.asset == asset:
                total += account.available + sum(account.reservations.values()) + sum(account.pending_out.values())
        return total


@pytest.fixture
def book() -> Book:
    return Book()
