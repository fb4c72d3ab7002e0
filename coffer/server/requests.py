"""Request bodies of the HTTP API and their translation into core commands.

Method: msgspec decodes a body strictly into one of the structs below (unknown fields and wrong
types are refused), then the kind's converter (:mod:`coffer.server.command_table` names it) turns
decimal-string amounts into integers of the asset's minor unit with
:func:`coffer.core.amounts.parse_amount`. Anything malformed raises
:class:`RequestError` (HTTP 422) and never reaches the log; a body that is not JSON, not UTF-8,
nested too deep or repeats a key is refused before that by :mod:`coffer.http.inputs`.

Parsing an amount needs its asset's scale, which this node knows from its applied state: the
asset of a transfer or leg, or the account of a reservation or limit change. A command that names
an account or asset this node has never seen is answered here with what the ledger would answer
(``ACCOUNT_NOT_FOUND`` / ``ASSET_MISMATCH``); such an answer changed nothing and is not kept in
the dedup store, so a retry after the account exists is applied.
"""

import functools
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from coffer.core import commands as core
from coffer.core.amounts import AmountError, amount_sign, parse_amount
from coffer.core.errors import ErrorCode
from coffer.http import inputs

dedup_id_length_max = core.id_length_max

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=core.id_length_max, pattern=r"^[A-Za-z0-9._:-]+$")]
AssetName = Annotated[str, msgspec.Meta(min_length=1, max_length=core.asset_length_max, pattern=r"^[A-Za-z0-9._:-]+$")]
DedupId = Annotated[str, msgspec.Meta(min_length=1, max_length=dedup_id_length_max)]
AmountText = Annotated[str, msgspec.Meta(description="decimal string in the asset's scale, e.g. '12.50'", examples=["12.50"])]
MetadataMap = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=core.metadata_key_length_max)],
        Annotated[str, msgspec.Meta(max_length=core.metadata_value_length_max)],
    ],
    msgspec.Meta(max_length=core.metadata_keys_max),
]

# Fields whose wrong JSON type is an amount error, not a generic schema error (docs/api.md: a JSON
# number where an amount belongs is INVALID_AMOUNT).
amount_fields = frozenset(
    {
        "amount",
        "lower_limit",
        "upper_limit",
        "expected_from_balance",
        "expected_to_balance",
        "expected_balance",
        "min_balance",
        "max_balance",
        "amount_per_hour",
        "amount_per_day",
    }
)


class RequestError(Exception):
    """A malformed request: HTTP 422 with a stable code."""

    def __init__(self, code: ErrorCode, message: str, account_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.account_id = account_id


def refuse_reserved_command_ids(dedup_id: object, txn_id: object = None) -> None:
    """A client's command may not carry an id that flow runs or cross-shard transactions derive
    for their own commands (``core.reserved_id_prefixes``): sent first, it would take the place of
    their step. Those layers send their commands past this check."""
    for name, value in (("dedup_id", dedup_id), ("txn_id", txn_id)):
        refusal = core.reserved_id_refusal(name, value) if isinstance(value, str) else None
        if refusal is not None:
            raise RequestError(ErrorCode.INVALID_REQUEST, refusal)


def refuse_reserved_account_ids(body: "CommandBody") -> None:
    """A client's command may not name a stripe of a striped account (``core.stripe_id_prefix``):
    only the sharded node's router credits and sweeps stripes. Reading one is fine."""
    named = [getattr(body, name, None) for name in ("account_id", "from_account_id", "to_account_id")]
    for group in ("legs", "preconditions"):
        named.extend(item.account_id for item in getattr(body, group, ()))
    for account_id in named:
        refusal = core.reserved_account_id_refusal(account_id) if isinstance(account_id, str) else None
        if refusal is not None:
            raise RequestError(ErrorCode.INVALID_REQUEST, refusal, account_id)


def _refuse_reserved_ids(*account_ids: str) -> None:
    # Raised in __post_init__, a ValueError becomes the decoder's ValidationError (422).
    for account_id in account_ids:
        inputs.refuse_reserved_id(account_id)


class CommandBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every command's body has; each command's own body adds its fields."""

    dedup_id: DedupId


class CreateAccountBody(CommandBody):
    account_id: Id
    asset: AssetName
    scale: Annotated[int, msgspec.Meta(ge=0, le=18)] = 2
    lower_limit: AmountText | None = None
    upper_limit: AmountText | None = None
    metadata: MetadataMap | None = None
    # A striped account (sharded nodes only, see coffer.txn.stripes): its credits spread over
    # this many accounts on different shards, read as one balance.
    stripes: Annotated[int, msgspec.Meta(ge=2, le=core.stripes_max)] | None = None

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class UpdateLimitsBody(CommandBody):
    account_id: Id
    lower_limit: AmountText | None = None
    upper_limit: AmountText | msgspec.UnsetType | None = msgspec.UNSET

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class AccountBody(CommandBody):
    """Lock, unlock and delete: the account comes from the path."""

    account_id: Id

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class TransferBody(CommandBody):
    from_account_id: Id
    to_account_id: Id
    amount: AmountText
    asset: AssetName
    metadata: MetadataMap | None = None
    expected_from_balance: AmountText | None = None
    expected_to_balance: AmountText | None = None

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.from_account_id, self.to_account_id)


class LegBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account_id: Id
    amount: AmountText
    asset: AssetName
    metadata: MetadataMap | None = None

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class PreconditionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account_id: Id
    expected_balance: AmountText | None = None
    min_balance: AmountText | None = None
    max_balance: AmountText | None = None
    expected_version: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


Legs = Annotated[list[LegBody], msgspec.Meta(min_length=1, max_length=core.legs_max)]


class BatchOperationBody(CommandBody):
    legs: Legs
    preconditions: Annotated[list[PreconditionBody], msgspec.Meta(max_length=core.legs_max)] = []


class ReserveBody(CommandBody):
    account_id: Id
    reservation_id: Id
    amount: AmountText

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class ReleaseBody(CommandBody):
    account_id: Id
    reservation_id: Id
    amount: AmountText | None = None

    def __post_init__(self) -> None:
        _refuse_reserved_ids(self.account_id)


class TccTryBody(CommandBody):
    txn_id: Id
    legs: Legs
    timeout_s: Annotated[int, msgspec.Meta(ge=1, le=core.timeout_s_max)] | None = None
    preconditions: Annotated[list[PreconditionBody], msgspec.Meta(max_length=core.legs_max)] = []


class TxnBody(CommandBody):
    txn_id: Id


class CompensateBody(CommandBody):
    original_dedup_id: DedupId


class DecideBody(CommandBody):
    """The decision of a cross-shard transaction at its commit point (the transaction layer's)."""

    txn_id: Id
    commit: bool
    participants: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]], msgspec.Meta(max_length=core.legs_max)] = []
    reason_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Z_]+$")] | None = None
    reason_message: Annotated[str, msgspec.Meta(max_length=core.metadata_value_length_max)] = ""
    reason_account_id: Id | None = None


class VelocityLimitsBody(CommandBody):
    """Replace an account's velocity caps (absent or null: no cap); the account comes from the path."""

    account_id: Id
    amount_per_hour: AmountText | None = None
    amount_per_day: AmountText | None = None
    debits_per_hour: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    debits_per_day: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


class StartFlowRunBody(CommandBody):
    """A flow run's start record (the flows' runner on a sharded node's router sends it to shard 0)."""

    flow: Annotated[str, msgspec.Meta(min_length=1, max_length=core.flow_name_length_max)]
    version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
    params: Annotated[str, msgspec.Meta(max_length=core.flow_params_bytes_max)]  # JSON text


# A sweep is no command of its own (the router runs it as a batch across shards), but its body is
# read the same way.
class SweepBody(CommandBody):
    """``POST /v1/accounts/{account_id}/sweep``: every stripe's available, to one ordinary account."""

    to_account_id: Id


class FinishFlowRunBody(CommandBody):
    run_id: Id
    outcome: Annotated[str, msgspec.Meta(max_length=core.flow_outcome_bytes_max)]  # JSON text


def _schema_error(error: msgspec.ValidationError) -> RequestError:
    message = str(error)
    path = message.rpartition("at `$")[2].rstrip("`")
    field = path.rpartition(".")[2]
    if field in amount_fields and message.startswith("Expected `str"):
        return RequestError(ErrorCode.INVALID_AMOUNT, f"amounts are decimal strings: {message}")
    return RequestError(ErrorCode.INVALID_REQUEST, message)


@functools.cache
def _decoder(body_type: type[CommandBody]) -> msgspec.json.Decoder[CommandBody]:
    return msgspec.json.Decoder(body_type)


def decode_body(body_type: type[CommandBody], data: bytes) -> CommandBody:
    try:
        return inputs.decode_json(data, _decoder(body_type).decode)
    except msgspec.ValidationError as error:
        raise _schema_error(error) from None


def convert_body(body_type: type[CommandBody], data: dict[str, Any]) -> CommandBody:
    """A body from an already-parsed JSON object (one item of POST /v1/commands)."""
    try:
        return msgspec.convert(data, body_type, strict=True)
    except msgspec.ValidationError as error:
        raise _schema_error(error) from None


class Scales:
    """What the edge needs to know of the applied state: scales of accounts and assets.

    ``overlay`` holds accounts created earlier in the same request, so that one POST /v1/commands
    can create an account and move money on it.
    """

    def __init__(self, account_scale: Callable[[str], tuple[str, int] | None], asset_scale: Callable[[str], int | None]) -> None:
        self._account_scale = account_scale
        self._asset_scale = asset_scale
        self.overlay_accounts: dict[str, tuple[str, int]] = {}
        self.overlay_assets: dict[str, int] = {}

    def account(self, account_id: str) -> int | None:
        """The account's scale, or None if this node has not seen the account (yet)."""
        known = self.overlay_accounts.get(account_id) or self._account_scale(account_id)
        return None if known is None else known[1]

    def asset(self, asset: str) -> int | None:
        """The asset's scale, or None if no account this node has seen holds it."""
        scale = self.overlay_assets.get(asset)
        return self._asset_scale(asset) if scale is None else scale

    def created(self, account_id: str, asset: str, scale: int) -> None:
        self.overlay_accounts.setdefault(account_id, (asset, scale))
        self.overlay_assets.setdefault(asset, scale)


def _amount(text: str | None, scale: int | None, *, signed: bool = False, positive: bool = False) -> core.Amount | None:
    """Minor units at ``scale``; with no known scale, the checked text, for the ledger to resolve.

    Unknown scale: the command still goes to the log, where its outcome (usually
    ACCOUNT_NOT_FOUND) is final for its dedup_id, whatever is created later.
    """
    if text is None:
        return None
    try:
        if scale is None:
            sign = amount_sign(text, signed=signed)
            if positive and sign <= 0:
                raise RequestError(ErrorCode.INVALID_AMOUNT, f"amount {text!r} must be positive")
            return text
        value = parse_amount(text, scale, signed=signed)
    except AmountError as error:
        raise RequestError(ErrorCode.INVALID_AMOUNT, str(error)) from None
    if positive and value <= 0:
        raise RequestError(ErrorCode.INVALID_AMOUNT, f"amount {text!r} must be positive")
    return value


def _legs(legs: list[LegBody], scales: Scales) -> tuple[core.Leg, ...]:
    converted = []
    for leg in legs:
        scale = scales.asset(leg.asset)
        amount = _amount(leg.amount, scale, signed=True)
        if amount == 0 or (scale is None and amount_sign(leg.amount, signed=True) == 0):
            raise RequestError(ErrorCode.INVALID_AMOUNT, "a leg's amount must not be zero", leg.account_id)
        converted.append(core.Leg(account_id=leg.account_id, amount=amount, asset=leg.asset, metadata=leg.metadata))
    return tuple(converted)


def _preconditions(conditions: list[PreconditionBody], scales: Scales) -> tuple[core.Precondition, ...]:
    converted = []
    for condition in conditions:
        scale = scales.account(condition.account_id)
        converted.append(
            core.Precondition(
                account_id=condition.account_id,
                expected_balance=_amount(condition.expected_balance, scale, signed=True),
                min_balance=_amount(condition.min_balance, scale, signed=True),
                max_balance=_amount(condition.max_balance, scale, signed=True),
                expected_version=condition.expected_version,
            )
        )
    return tuple(converted)


# ---------------------------------------------------------------- one converter per command kind
# Each turns its decoded body into the core command; :mod:`coffer.server.command_table` names the
# converter of every kind.


def create_account_command(body: CreateAccountBody, scales: Scales) -> core.Command:
    if body.stripes is not None:
        # The router of a sharded node creates striped accounts; one ledger cannot spread them.
        raise RequestError(
            ErrorCode.INVALID_REQUEST, "stripes need a sharded node (coffer serve --shards N): one shard is one ledger", body.account_id
        )
    lower = _amount(body.lower_limit, body.scale, signed=True)
    command = core.CreateAccount(
        dedup_id=body.dedup_id,
        account_id=body.account_id,
        asset=body.asset,
        scale=body.scale,
        lower_limit=0 if lower is None else lower,
        upper_limit=_amount(body.upper_limit, body.scale, signed=True),
        metadata=body.metadata,
    )
    scales.created(body.account_id, body.asset, body.scale)  # later commands of the same request see it
    return command


def update_limits_command(body: UpdateLimitsBody, scales: Scales) -> core.Command:
    scale = scales.account(body.account_id)
    keep_upper = body.upper_limit is msgspec.UNSET
    return core.UpdateLimits(
        dedup_id=body.dedup_id,
        account_id=body.account_id,
        lower_limit=_amount(body.lower_limit, scale, signed=True),
        upper_limit=None if keep_upper else _amount(body.upper_limit, scale, signed=True),  # type: ignore[arg-type]
        keep_upper_limit=keep_upper,
    )


def account_command(
    command_type: type[core.LockAccount | core.UnlockAccount | core.DeleteAccount],
) -> Callable[[AccountBody, Scales], core.Command]:
    """The converter of lock, unlock or delete: one body (the account), a different command each."""

    def convert(body: AccountBody, scales: Scales) -> core.Command:
        return command_type(dedup_id=body.dedup_id, account_id=body.account_id)

    return convert


def transfer_command(body: TransferBody, scales: Scales) -> core.Command:
    scale = scales.asset(body.asset)
    return core.Transfer(
        dedup_id=body.dedup_id,
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=_amount(body.amount, scale, positive=True),  # type: ignore[arg-type]
        asset=body.asset,
        metadata=body.metadata,
        expected_from_balance=_amount(body.expected_from_balance, scale, signed=True),
        expected_to_balance=_amount(body.expected_to_balance, scale, signed=True),
    )


def batch_operation_command(body: BatchOperationBody, scales: Scales) -> core.Command:
    legs = _legs(body.legs, scales)
    return core.BatchBalanceOperation(dedup_id=body.dedup_id, legs=legs, preconditions=_preconditions(body.preconditions, scales))


def reserve_command(body: ReserveBody, scales: Scales) -> core.Command:
    scale = scales.account(body.account_id)
    return core.Reserve(
        dedup_id=body.dedup_id,
        account_id=body.account_id,
        reservation_id=body.reservation_id,
        amount=_amount(body.amount, scale, positive=True),  # type: ignore[arg-type]
    )


def release_command(body: ReleaseBody, scales: Scales) -> core.Command:
    scale = scales.account(body.account_id)
    return core.Release(
        dedup_id=body.dedup_id,
        account_id=body.account_id,
        reservation_id=body.reservation_id,
        amount=_amount(body.amount, scale, positive=True),
    )


def tcc_try_command(body: TccTryBody, scales: Scales) -> core.Command:
    return core.TccTry(
        dedup_id=body.dedup_id,
        txn_id=body.txn_id,
        legs=_legs(body.legs, scales),
        timeout_s=body.timeout_s,
        preconditions=_preconditions(body.preconditions, scales),
    )


def txn_command(command_type: type[core.TccConfirm | core.TccCancel]) -> Callable[[TxnBody, Scales], core.Command]:
    """The converter of confirm or cancel: one body (the transaction), a different command each."""

    def convert(body: TxnBody, scales: Scales) -> core.Command:
        return command_type(dedup_id=body.dedup_id, txn_id=body.txn_id)

    return convert


def compensate_command(body: CompensateBody, scales: Scales) -> core.Command:
    if body.original_dedup_id == body.dedup_id:
        raise RequestError(ErrorCode.INVALID_REQUEST, "a command cannot compensate itself")
    return core.Compensate(dedup_id=body.dedup_id, original_dedup_id=body.original_dedup_id)


def decide_command(body: DecideBody, scales: Scales) -> core.Command:
    return core.Decide(
        dedup_id=body.dedup_id,
        txn_id=body.txn_id,
        commit=body.commit,
        participants=tuple(body.participants),
        reason_code=body.reason_code,
        reason_message=body.reason_message,
        reason_account_id=body.reason_account_id,
    )


def velocity_limits_command(body: VelocityLimitsBody, scales: Scales) -> core.Command:
    scale = scales.account(body.account_id)
    return core.SetVelocityLimits(
        dedup_id=body.dedup_id,
        account_id=body.account_id,
        amount_per_hour=_amount(body.amount_per_hour, scale, positive=True),
        amount_per_day=_amount(body.amount_per_day, scale, positive=True),
        debits_per_hour=body.debits_per_hour,
        debits_per_day=body.debits_per_day,
    )


def start_flow_run_command(body: StartFlowRunBody, scales: Scales) -> core.Command:
    return core.StartFlowRun(dedup_id=body.dedup_id, flow=body.flow, version=body.version, params=body.params.encode())


def finish_flow_run_command(body: FinishFlowRunBody, scales: Scales) -> core.Command:
    return core.FinishFlowRun(dedup_id=body.dedup_id, run_id=body.run_id, outcome=body.outcome.encode())
