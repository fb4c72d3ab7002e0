"""The commands of the write side, as they travel in the log and enter the state machine.

Amounts here are already integers of the asset's minor unit: the edge (HTTP, client) parses
decimal strings with :mod:`coffer.core.amounts` before a command is built. Every command has a
``dedup_id``. Commands are immutable values: the dedup store keeps them to compare the payload of
a retry and to know what a compensation must undo.

Amounts the edge could not resolve. An amount's integer depends on its asset's scale; when the
node taking the request has not seen the account (or asset) the amount needs, it cannot know that
scale, yet the command must still reach the log: its outcome there is final for its ``dedup_id``
(a retry answers what the first attempt answered, whatever was created in between). Such a
command carries the amount as its decimal text (an :data:`Amount` that is a ``str``, already
checked against the grammar, the sign and the bound at the widest scale); the state machine
resolves it with the scale it knows at that log position (see ``state_machine.py``).

Encoding: msgpack arrays tagged with the API's command type name (``["transfer", ...]``), which
keeps log records small and fast to decode. The tag names are part of the log format.
"""

from typing import Annotated, Any

import msgspec

Amount = int | str  # minor units, or the decimal text of an amount the edge could not resolve

# A metadata map: small, string to string, so that it is canonical in the event history and
# cannot carry floats into a ledger that has none.
Metadata = dict[str, str]

metadata_keys_max = 32
metadata_key_length_max = 64
metadata_value_length_max = 1024
id_length_max = 128
asset_length_max = 32
legs_max = 1024  # one command may touch many accounts, but its event must stay a sane size.
timeout_s_max = 30 * 24 * 3600  # a two-phase hold longer than 30 days is a business error.
flow_name_length_max = 64
# A flow definition and a run's params or outcome are data for the access layer, not documents:
# these bound what one log entry and the replicated state can be made to carry.
flow_definition_bytes_max = 64 * 1024
flow_params_bytes_max = 16 * 1024
flow_outcome_bytes_max = 64 * 1024

# Ids the layers above the core derive for the commands they send on a client's behalf. A client
# that sent one could take the place of a step of someone's flow run or transaction, so the edge
# refuses them from clients (the core itself applies them like any other id).
flow_dedup_id_prefix = "fl:"  # a flow run's steps: fl:<run_id>:<step>
flow_hashed_dedup_id_prefix = "fh:"  # the same for a long run id: fh:<hash of the run_id>:<step>
transaction_id_prefix = "cx:"  # a cross-shard transaction's txn_id and its steps' dedup_ids
# A striped account's stripes (st:<digest of its id>:<n>) and the steps that create them: a
# client that could name a stripe could debit it past the striped account's credit-only rule.
stripe_id_prefix = "st:"
reserved_id_prefixes = (flow_dedup_id_prefix, flow_hashed_dedup_id_prefix, transaction_id_prefix, stripe_id_prefix)
reserved_account_id_prefixes = (stripe_id_prefix,)
# A striped account spreads its credits over this many accounts at most: about one per shard of the
# largest ledger (shards_max), and a sweep (every stripe and the target, in one batch) is one command.
stripes_max = legs_max - 1


def reserved_id_refusal(name: str, identifier: str) -> str | None:
    """Why a client may not send ``identifier`` as its ``name`` (``dedup_id``, ``txn_id``), or None."""
    prefix = next((prefix for prefix in reserved_id_prefixes if identifier.startswith(prefix)), None)
    if prefix is None:
        return None
    return (
        f"{name} {identifier!r} starts with {prefix!r}: {name}s starting with {', '.join(reserved_id_prefixes)} are reserved "
        "for the ids that flow runs, cross-shard transactions and striped accounts derive for their own commands"
    )


def reserved_account_id_refusal(account_id: str) -> str | None:
    """Why a client may not name ``account_id`` in a command (it is a stripe's), or None."""
    if not account_id.startswith(reserved_account_id_prefixes):
        return None
    return (
        f"account_id {account_id!r} starts with {stripe_id_prefix!r}: such ids are reserved for the stripes of striped accounts, "
        "which only credits routed by a sharded node and sweeps may touch"
    )

AccountId = Annotated[str, msgspec.Meta(min_length=1, max_length=id_length_max, pattern=r"^[A-Za-z0-9._:-]+$")]
Asset = Annotated[str, msgspec.Meta(min_length=1, max_length=asset_length_max, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Command(msgspec.Struct, frozen=True, array_like=True, gc=False, tag_field="type", kw_only=True):
    dedup_id: str


class CreateAccount(_Command, tag="create_account"):
    account_id: str
    asset: str
    scale: int = 2
    lower_limit: int = 0
    upper_limit: int | None = None
    metadata: Metadata | None = None


class UpdateLimits(_Command, tag="update_limits"):
    account_id: str
    lower_limit: Amount | None = None  # None keeps the current lower limit
    upper_limit: Amount | None = None  # None removes the upper limit, unless keep_upper_limit
    keep_upper_limit: bool = False


class LockAccount(_Command, tag="lock_account"):
    account_id: str


class UnlockAccount(_Command, tag="unlock_account"):
    account_id: str


class DeleteAccount(_Command, tag="delete_account"):
    account_id: str


class Transfer(_Command, tag="transfer"):
    from_account_id: str
    to_account_id: str
    amount: Amount
    asset: str
    metadata: Metadata | None = None
    expected_from_balance: Amount | None = None
    expected_to_balance: Amount | None = None


class Leg(msgspec.Struct, frozen=True, array_like=True, gc=False, kw_only=True):
    """A signed amount on one account: positive adds, negative takes away."""

    account_id: str
    amount: Amount
    asset: str
    metadata: Metadata | None = None


class Precondition(msgspec.Struct, frozen=True, array_like=True, gc=False, kw_only=True):
    """Conditions on one account's state before the command; every one given must hold."""

    account_id: str
    expected_balance: Amount | None = None
    min_balance: Amount | None = None
    max_balance: Amount | None = None
    expected_version: int | None = None


class BatchBalanceOperation(_Command, tag="batch_operation"):
    legs: tuple[Leg, ...]
    preconditions: tuple[Precondition, ...] = ()


class Reserve(_Command, tag="reserve"):
    account_id: str
    reservation_id: str
    amount: Amount


class Release(_Command, tag="release"):
    account_id: str
    reservation_id: str
    amount: Amount | None = None  # None releases the whole reservation


class TccTry(_Command, tag="tcc_try"):
    txn_id: str
    legs: tuple[Leg, ...]
    timeout_s: int | None = None
    # Checked on this ledger with the holds, all or nothing: a cross-shard batch operation's
    # preconditions travel with the try on the shard that holds their accounts.
    preconditions: tuple[Precondition, ...] = ()


class TccConfirm(_Command, tag="tcc_confirm"):
    txn_id: str


class TccCancel(_Command, tag="tcc_cancel"):
    txn_id: str


class Compensate(_Command, tag="compensate"):
    original_dedup_id: str


class Decide(_Command, tag="decide"):
    """The outcome of a cross-shard transaction, recorded at its commit point (one participant).

    The first decision written for a ``txn_id`` wins: a coordinator proposing commit and a recovery
    task proposing abort can never both succeed. ``reason_*`` say why an abort was decided (the
    rejection a participant answered, or a timeout), so that every retry answers the same.
    """

    txn_id: str
    commit: bool
    participants: tuple[int, ...] = ()
    reason_code: str | None = None
    reason_message: str = ""
    reason_account_id: str | None = None


class SetVelocityLimits(_Command, tag="set_velocity_limits"):
    """Replace an account's velocity caps (see ``velocity.py``); every cap ``None`` removes them."""

    account_id: str
    amount_per_hour: Amount | None = None
    amount_per_day: Amount | None = None
    debits_per_hour: int | None = None
    debits_per_day: int | None = None


class PutFlow(_Command, tag="put_flow"):
    """Register the next version of a flow of the access layer.

    The core keeps ``definition`` as opaque bytes (the access layer's canonical JSON) and never
    reads it: replicas, snapshots and the event history agree on every flow without the core
    knowing what a flow is.
    """

    name: str
    definition: bytes


class StartFlowRun(_Command, tag="start_flow_run"):
    """Record that a run of a flow begins; the run's id is this command's ``dedup_id``.

    ``version`` ``None`` takes the flow's latest version at this point of the log, so a retry of
    the same request runs the version the first attempt ran. ``params`` are opaque bytes.
    """

    flow: str
    version: int | None = None
    params: bytes = b""


class FinishFlowRun(_Command, tag="finish_flow_run"):
    """Record how a flow run ended (opaque bytes); the first outcome recorded stays."""

    run_id: str
    outcome: bytes


Command = (
    CreateAccount
    | UpdateLimits
    | LockAccount
    | UnlockAccount
    | DeleteAccount
    | Transfer
    | BatchBalanceOperation
    | Reserve
    | Release
    | TccTry
    | TccConfirm
    | TccCancel
    | Compensate
    | Decide
    | SetVelocityLimits
    | PutFlow
    | StartFlowRun
    | FinishFlowRun
)

command_types: tuple[type[_Command], ...] = Command.__args__  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- format 1
# Commands as the release before protocol versions encoded them, for reading its log entries,
# events and snapshots. A command's array puts its own fields first and ``dedup_id`` last, so a
# field added since shifts the positions: each command whose fields changed keeps its old layout
# here, and :func:`from_format_1` makes the current command of it.


class _TccTryFormat1(_Command, tag="tcc_try"):
    txn_id: str
    legs: tuple[Leg, ...]
    timeout_s: int | None = None


CommandFormat1 = (
    CreateAccount
    | UpdateLimits
    | LockAccount
    | UnlockAccount
    | DeleteAccount
    | Transfer
    | BatchBalanceOperation
    | Reserve
    | Release
    | _TccTryFormat1
    | TccConfirm
    | TccCancel
    | Compensate
)


def to_format_1(command: Command) -> Any:
    """``command`` in its format-1 layout, for the events of a ledger still on protocol 1."""
    if isinstance(command, TccTry):
        assert not command.preconditions, "a try with preconditions has no format-1 spelling (protocol 2)"
        return _TccTryFormat1(dedup_id=command.dedup_id, txn_id=command.txn_id, legs=command.legs, timeout_s=command.timeout_s)
    return command


def from_format_1(command: Any) -> Command:
    """The current command of a command decoded in format 1 (see above)."""
    if isinstance(command, _TccTryFormat1):
        return TccTry(dedup_id=command.dedup_id, txn_id=command.txn_id, legs=command.legs, timeout_s=command.timeout_s)
    return command  # type: ignore[no-any-return]
