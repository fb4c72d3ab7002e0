"""What the simulated clients ask for: every kind of command, valid and not, from one seeded RNG.

Job. Drive the ledger through all of its rules under faults: accounts of three assets with and
without limits, deposits and withdrawals (batch legs, with and without preconditions), transfers
(some conditional), reserve/release, TCC tries with and without timeouts and their confirm or
cancel, compensations of earlier commands (and of commands that never came: null compensations,
followed sometimes by the late original), lock/unlock/delete, limit changes, a ``dedup_id`` reused
for another payload, and plain repeats of an answered command.

Method. Clients know nothing of the ledger's state but the ids that were sent (a shared, ordered
registry), so many commands are rejected; that is wanted, rejections are outcomes too. Everything
is drawn from the one ``random.Random`` the simulator passes in, in a fixed order, and every
collection here is a list, so a seed always yields the same commands.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from coffer.core.commands import (
    BatchBalanceOperation,
    Command,
    Compensate,
    CreateAccount,
    DeleteAccount,
    Leg,
    LockAccount,
    Precondition,
    Release,
    Reserve,
    SetVelocityLimits,
    TccCancel,
    TccConfirm,
    TccTry,
    Transfer,
    UnlockAccount,
    UpdateLimits,
)

# (asset, scale): three scales, so that amounts of one asset never pass for another's.
assets = (("USD", 2), ("BTC", 8), ("PTS", 0))
accounts_per_asset = 4
commands_per_request_max = 3  # a request may carry several commands, like POST /v1/commands
multi_command_request_chance = 0.25
deposit_minor_units_max = 50_000
transfer_minor_units_max = 8_000
credit_line_minor_units = 20_000  # a negative lower limit some accounts get
upper_limit_minor_units = 150_000
tcc_timeout_s_max = 20  # long enough that some tries finish in time, short enough that many expire
# Amounts and limits at the edges: around 64 bits (where the encodings switch to wide integers) and
# at the ledger's bound of 2^127 - 1 minor units. Each of these fits; a few of them add up to
# balances that do not, which the ledger must refuse (BALANCE_OUT_OF_RANGE), never crash on.
huge_amount_chance = 0.03  # per amount or limit drawn
huge_minor_units = (2**62, 2**63 - 1, 2**63, 2**64 + 1, 2**100, 2**126, 2**127 - 1)

# Relative weights of the kinds of command once the accounts exist.
command_weights: dict[str, int] = {
    "create_account": 2,
    "update_limits": 2,
    "lock_account": 1,
    "unlock_account": 3,
    "delete_account": 1,
    "transfer": 22,
    "batch_operation": 18,
    "reserve": 7,
    "release": 6,
    "tcc_try": 10,
    "tcc_confirm": 6,
    "tcc_cancel": 4,
    "compensate": 6,
    "late_original": 2,
    "reused_dedup_id": 2,
    "set_velocity_limits": 2,
}
# While accounts are still missing, most commands create them or fund them.
bootstrap_weights: dict[str, int] = {"create_account": 10, "batch_operation": 3, "transfer": 1}


@dataclass
class Registry:
    """What clients have sent so far, shared by all of them (lists: iteration order is fixed)."""

    account_ids_created: list[str] = field(default_factory=list)
    dedup_ids: list[str] = field(default_factory=list)
    txn_ids: list[str] = field(default_factory=list)
    reservations: list[tuple[str, str]] = field(default_factory=list)  # (account_id, reservation_id)
    preempted_dedup_ids: list[str] = field(default_factory=list)  # compensated before they were sent


@dataclass(frozen=True)
class PoolAccount:
    account_id: str
    asset: str
    scale: int


pool = tuple(
    PoolAccount(f"{asset.lower()}-{number}", asset, scale) for asset, scale in assets for number in range(accounts_per_asset)
)


class Workload:
    """Builds the next request of a client; one instance per simulated run."""

    def __init__(self, rng: random.Random, *, huge_amount_chance: float = huge_amount_chance) -> None:
        self.rng = rng
        self.huge_amount_chance = huge_amount_chance
        self.registry = Registry()
        self._counters: dict[int, int] = {}
        self._builders: dict[str, Callable[[int], Command | None]] = {
            "create_account": self._create_account,
            "update_limits": self._update_limits,
            "lock_account": self._lock_account,
            "unlock_account": self._unlock_account,
            "delete_account": self._delete_account,
            "transfer": self._transfer,
            "batch_operation": self._batch_operation,
            "reserve": self._reserve,
            "release": self._release,
            "tcc_try": self._tcc_try,
            "tcc_confirm": self._tcc_confirm,
            "tcc_cancel": self._tcc_cancel,
            "compensate": self._compensate,
            "late_original": self._late_original,
            "reused_dedup_id": self._reused_dedup_id,
            "set_velocity_limits": self._set_velocity_limits,
        }

    def next_request(self, client: int) -> tuple[Command, ...]:
        """One to a few new commands for ``client``."""
        count = 1
        if self.rng.random() < multi_command_request_chance:
            count = self.rng.randint(2, commands_per_request_max)
        commands = []
        while len(commands) < count:
            weights = bootstrap_weights if len(self.registry.account_ids_created) < len(pool) else command_weights
            kind = self.rng.choices(list(weights), list(weights.values()))[0]
            command = self._builders[kind](client)
            if command is not None:
                commands.append(command)
        return tuple(commands)

    # ------------------------------------------------------------------ helpers

    def _dedup_id(self, client: int) -> str:
        number = self._counters.get(client, 0) + 1
        self._counters[client] = number
        dedup_id = f"c{client}-{number}"
        self.registry.dedup_ids.append(dedup_id)
        return dedup_id

    def _account(self, asset: str | None = None) -> PoolAccount:
        candidates = [account for account in pool if asset is None or account.asset == asset]
        return self.rng.choice(candidates)

    def _huge(self) -> int | None:
        """Now and then an amount at an edge of the encodings or of the bound."""
        if self.rng.random() < self.huge_amount_chance:
            return self.rng.choice(huge_minor_units)
        return None

    def _amount(self, maximum: int) -> int:
        """Mostly a valid positive amount; now and then zero or negative (INVALID_AMOUNT)."""
        huge = self._huge()
        if huge is not None:
            return huge
        roll = self.rng.random()
        if roll < 0.02:
            return 0
        if roll < 0.04:
            return -self.rng.randint(1, maximum)
        return self.rng.randint(1, maximum)

    def _legs(self, signed: bool) -> tuple[Leg, ...]:
        asset = self.rng.choice(assets)[0]
        legs = []
        for _ in range(self.rng.randint(1, 3)):
            account = self._account(asset if self.rng.random() < 0.95 else None)
            amount = self._huge() or self.rng.randint(1, deposit_minor_units_max)
            if signed and self.rng.random() < 0.45:
                amount = -(self._huge() or self.rng.randint(1, transfer_minor_units_max))
            # A leg's asset is the intended one; an account of another asset gets ASSET_MISMATCH.
            legs.append(Leg(account_id=account.account_id, amount=amount, asset=asset))
        return tuple(legs)

    # ------------------------------------------------------------------ accounts

    def _create_account(self, client: int) -> Command:
        missing = [account for account in pool if account.account_id not in self.registry.account_ids_created]
        account = self.rng.choice(missing) if missing and self.rng.random() < 0.9 else self._account()
        if account.account_id not in self.registry.account_ids_created:
            self.registry.account_ids_created.append(account.account_id)
        scale = account.scale if self.rng.random() < 0.97 else account.scale + 1  # ASSET_MISMATCH
        lower_limit = self.rng.choice((0, 0, 0, -(self._huge() or credit_line_minor_units)))
        upper_limit = self.rng.choice((None, None, self._huge() or upper_limit_minor_units))
        metadata = {"owner": f"client-{client}"} if self.rng.random() < 0.3 else None
        return CreateAccount(
            dedup_id=self._dedup_id(client),
            account_id=account.account_id,
            asset=account.asset,
            scale=scale,
            lower_limit=lower_limit,
            upper_limit=upper_limit,
            metadata=metadata,
        )

    def _update_limits(self, client: int) -> Command:
        keep_upper_limit = self.rng.random() < 0.5
        return UpdateLimits(
            dedup_id=self._dedup_id(client),
            account_id=self._account().account_id,
            lower_limit=self.rng.choice((None, 0, -credit_line_minor_units, 1_000)),
            upper_limit=None if keep_upper_limit else self.rng.choice((None, upper_limit_minor_units, 10_000)),
            keep_upper_limit=keep_upper_limit,
        )

    def _set_velocity_limits(self, client: int) -> Command:
        """Caps near the amounts moved, so that they bite; now and then none (removed), or malformed."""
        def cap(maximum: int) -> int | None:
            return self.rng.choice((None, None, self.rng.randint(1, maximum), 0))

        return SetVelocityLimits(
            dedup_id=self._dedup_id(client),
            account_id=self._account().account_id,
            amount_per_hour=cap(3 * transfer_minor_units_max),
            amount_per_day=cap(10 * transfer_minor_units_max),
            debits_per_hour=cap(4),
            debits_per_day=cap(8),
        )

    def _lock_account(self, client: int) -> Command:
        return LockAccount(dedup_id=self._dedup_id(client), account_id=self._account().account_id)

    def _unlock_account(self, client: int) -> Command:
        return UnlockAccount(dedup_id=self._dedup_id(client), account_id=self._account().account_id)

    def _delete_account(self, client: int) -> Command:
        return DeleteAccount(dedup_id=self._dedup_id(client), account_id=self._account().account_id)

    # ------------------------------------------------------------------ balances

    def _transfer(self, client: int, dedup_id: str | None = None) -> Command:
        source = self._account()
        if self.rng.random() < 0.03:
            target = source  # SAME_ACCOUNT
        else:
            asset = source.asset if self.rng.random() < 0.97 else None
            target = self.rng.choice([account for account in pool if account != source and asset in (None, account.asset)])
        expected_from_balance = None
        if self.rng.random() < 0.05:
            expected_from_balance = self.rng.choice((0, 1_000))
        return Transfer(
            dedup_id=dedup_id or self._dedup_id(client),
            from_account_id=source.account_id,
            to_account_id=target.account_id,
            amount=self._amount(transfer_minor_units_max),
            asset=source.asset,
            expected_from_balance=expected_from_balance,
        )

    def _batch_operation(self, client: int, dedup_id: str | None = None) -> Command:
        legs = self._legs(signed=self.rng.random() < 0.6)
        preconditions = []
        if self.rng.random() < 0.25:
            for leg in legs[: self.rng.randint(1, len(legs))]:
                kind = self.rng.randrange(4)
                preconditions.append(
                    Precondition(
                        account_id=leg.account_id,
                        expected_balance=0 if kind == 0 else None,
                        min_balance=self.rng.randint(0, transfer_minor_units_max) if kind == 1 else None,
                        max_balance=self.rng.randint(0, upper_limit_minor_units) if kind == 2 else None,
                        expected_version=self.rng.randint(1, 8) if kind == 3 else None,
                    )
                )
        return BatchBalanceOperation(dedup_id=dedup_id or self._dedup_id(client), legs=legs, preconditions=tuple(preconditions))

    def _reserve(self, client: int) -> Command:
        account = self._account()
        if self.registry.reservations and self.rng.random() < 0.3:
            account_id, reservation_id = self.rng.choice(self.registry.reservations)  # adds to a reservation
        else:
            account_id, reservation_id = account.account_id, f"r{client}-{self._counters.get(client, 0)}"
            self.registry.reservations.append((account_id, reservation_id))
        return Reserve(
            dedup_id=self._dedup_id(client),
            account_id=account_id,
            reservation_id=reservation_id,
            amount=self._amount(transfer_minor_units_max),
        )

    def _release(self, client: int) -> Command:
        if self.registry.reservations and self.rng.random() < 0.9:
            account_id, reservation_id = self.rng.choice(self.registry.reservations)
        else:
            account_id, reservation_id = self._account().account_id, "r-unknown"
        amount = None if self.rng.random() < 0.5 else self._amount(transfer_minor_units_max // 2)
        return Release(dedup_id=self._dedup_id(client), account_id=account_id, reservation_id=reservation_id, amount=amount)

    # ------------------------------------------------------------------ two-phase

    def _tcc_try(self, client: int) -> Command:
        dedup_id = self._dedup_id(client)
        txn_id = (
            f"t{dedup_id}" if self.rng.random() < 0.95 or not self.registry.txn_ids else self.rng.choice(self.registry.txn_ids)
        )
        self.registry.txn_ids.append(txn_id)
        timeout_s = None if self.rng.random() < 0.4 else self.rng.randint(1, tcc_timeout_s_max)
        return TccTry(dedup_id=dedup_id, txn_id=txn_id, legs=self._legs(signed=True), timeout_s=timeout_s)

    def _txn_id(self) -> str:
        if self.registry.txn_ids and self.rng.random() < 0.95:
            return self.rng.choice(self.registry.txn_ids[-12:])  # recent ones: most are still open
        return "t-unknown"

    def _tcc_confirm(self, client: int) -> Command:
        return TccConfirm(dedup_id=self._dedup_id(client), txn_id=self._txn_id())

    def _tcc_cancel(self, client: int) -> Command:
        return TccCancel(dedup_id=self._dedup_id(client), txn_id=self._txn_id())

    # ------------------------------------------------------------------ sagas and dedup

    def _compensate(self, client: int) -> Command:
        dedup_id = self._dedup_id(client)
        if self.rng.random() < 0.2 or len(self.registry.dedup_ids) < 2:
            # An original that was never sent: a null compensation, and maybe a late original later.
            original = f"p{dedup_id}"
            self.registry.preempted_dedup_ids.append(original)
        else:
            original = self.rng.choice(self.registry.dedup_ids[-30:-1])
        return Compensate(dedup_id=dedup_id, original_dedup_id=original)

    def _late_original(self, client: int) -> Command | None:
        """A transfer or batch under a dedup_id a compensation already took."""
        if not self.registry.preempted_dedup_ids:
            return None
        dedup_id = self.registry.preempted_dedup_ids.pop(0)
        if self.rng.random() < 0.5:
            return self._transfer(client, dedup_id)
        return self._batch_operation(client, dedup_id)

    def _reused_dedup_id(self, client: int) -> Command | None:
        """A new payload under a dedup_id sent before: rejected with DEDUP_ID_REUSED."""
        if not self.registry.dedup_ids:
            return None
        dedup_id = self.rng.choice(self.registry.dedup_ids)
        return self._transfer(client, dedup_id)
