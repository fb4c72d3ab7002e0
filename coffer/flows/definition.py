"""Flow definitions: their schema, their validation at registration, and their canonical bytes.

A definition is JSON (or YAML, read into the same structure) with:

- ``params``: name -> ``{"type": account|amount|asset|text|decimal|integer, "asset"?, "default"?,
  "description"?}``; an amount parameter names its asset (``"{asset}"``, a parameter, or a
  literal such as ``"USD"``);
- ``computed``: an ordered list of ``{"name", "type": amount|decimal, "expr", "asset"?,
  "rounding"?}``; an amount is rounded to its asset's scale with the named mode, or must come out
  exact;
- ``checks``: ``{"expr", "message"}`` conditions the params must meet (else ``FLOW_CHECK_FAILED``);
- ``mode``: ``atomic`` (one command, all or nothing: usually a batch operation, which on a sharded
  node becomes a cross-shard transaction by itself) or ``saga`` (ordered steps, each with its
  compensation);
- ``steps``: ``{"name", <one command>, "compensation"?}`` where the command is one of
  ``transfer``, ``batch_operation``, ``reserve``, ``release``, ``tcc_try``, ``tcc_confirm``,
  ``tcc_cancel`` with the fields of its API body; amounts are expressions, ids and accounts are
  templates (``"fees:{asset}"``, ``"{payer}"``; ``{run_id}`` is the run's id). Legs are
  ``{"account", "debit" | "credit", "metadata"?}``; a leg whose amount is zero is left out. A batch
  operation or try with ``"balanced": true`` must move as much in as out per asset, which is
  proven at registration from the expressions alone.

Validation (:func:`load`) finds every unknown name, type error, unbalanced command, missing
compensation and malformed field, and says where (``steps[1].batch_operation.legs[0].credit:
...``): a flow that registers can only fail at run time on its params, its checks, or the ledger.
Nothing in a definition is code: the expression language has no loops, calls only ``min``,
``max`` and ``units``, and is bounded in size.

Canonical bytes: the validated definition as JSON with sorted keys and no spaces; that is what
the core stores and what ``GET /v1/flows/{name}`` answers.
"""

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from coffer.core.commands import asset_length_max, legs_max, metadata_keys_max, timeout_s_max
from coffer.flows import expressions
from coffer.flows.expressions import BOOL, LITERAL, NUMBER, ExpressionError, Kind, amount_kind

params_max = 32
computed_max = 32
checks_max = 16
steps_max = 16
flow_legs_max = 64  # per command of a flow: a business flow touches a handful of accounts
text_length_max = 1024
description_length_max = 1024
step_name_pattern = r"^[a-z][a-z0-9_]{0,31}$"
reserved_step_names = frozenset({"finish"})  # the run's own record uses it

ParamType = Literal["account", "amount", "asset", "text", "decimal", "integer"]
Rounding = Literal["down", "up", "floor", "ceiling", "half_up", "half_down", "half_even"]
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Template = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Expression = Annotated[str, msgspec.Meta(min_length=1, max_length=expressions.expression_length_max)]


class _Spec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class ParamSpec(_Spec):
    type: ParamType
    asset: Template | None = None
    default: str | int | None = None
    description: Annotated[str, msgspec.Meta(max_length=description_length_max)] = ""


class ComputedSpec(_Spec):
    name: Identifier
    type: Literal["amount", "decimal"]
    expr: Expression
    asset: Template | None = None
    rounding: Rounding | None = None


class CheckSpec(_Spec):
    expr: Expression
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=description_length_max)]


class LegSpec(_Spec):
    account: Template
    debit: Expression | None = None
    credit: Expression | None = None
    metadata: Annotated[dict[str, Template], msgspec.Meta(max_length=metadata_keys_max)] | None = None


class PreconditionSpec(_Spec):
    account: Template
    expected_balance: Expression | None = None
    min_balance: Expression | None = None
    max_balance: Expression | None = None


class TransferSpec(_Spec):
    from_account: Template = msgspec.field(name="from")
    to_account: Template = msgspec.field(name="to")
    amount: Expression
    metadata: Annotated[dict[str, Template], msgspec.Meta(max_length=metadata_keys_max)] | None = None


class BatchSpec(_Spec):
    legs: Annotated[list[LegSpec], msgspec.Meta(min_length=1, max_length=flow_legs_max)]
    preconditions: Annotated[list[PreconditionSpec], msgspec.Meta(max_length=flow_legs_max)] = []
    balanced: bool = False


class ReserveSpec(_Spec):
    account: Template
    reservation_id: Template
    amount: Expression


class ReleaseSpec(_Spec):
    account: Template
    reservation_id: Template
    amount: Expression | None = None  # absent: the whole reservation


class TccTrySpec(_Spec):
    txn_id: Template
    legs: Annotated[list[LegSpec], msgspec.Meta(min_length=1, max_length=flow_legs_max)]
    timeout_s: Expression | None = None
    preconditions: Annotated[list[PreconditionSpec], msgspec.Meta(max_length=flow_legs_max)] = []
    balanced: bool = False


class TxnSpec(_Spec):
    txn_id: Template


class CommandSpec(_Spec):
    """Exactly one of the fields is set: the command this step (or compensation) sends."""

    transfer: TransferSpec | None = None
    batch_operation: BatchSpec | None = None
    reserve: ReserveSpec | None = None
    release: ReleaseSpec | None = None
    tcc_try: TccTrySpec | None = None
    tcc_confirm: TxnSpec | None = None
    tcc_cancel: TxnSpec | None = None


command_kinds = ("transfer", "batch_operation", "reserve", "release", "tcc_try", "tcc_confirm", "tcc_cancel")
compensable_kinds = ("transfer", "batch_operation", "reserve")  # what the core's Compensate undoes


class StepSpec(CommandSpec, kw_only=True):
    name: Identifier
    compensation: Literal["compensate"] | CommandSpec | None = None


class FlowSpec(_Spec):
    """A definition as PUT accepts it (``name`` and ``version`` are answered by GET, and ignored)."""

    mode: Literal["atomic", "saga"]
    params: Annotated[dict[Identifier, ParamSpec], msgspec.Meta(max_length=params_max)]
    steps: Annotated[list[StepSpec], msgspec.Meta(min_length=1, max_length=steps_max)]
    description: Annotated[str, msgspec.Meta(max_length=description_length_max)] = ""
    computed: Annotated[list[ComputedSpec], msgspec.Meta(max_length=computed_max)] = []
    checks: Annotated[list[CheckSpec], msgspec.Meta(max_length=checks_max)] = []
    name: str | None = None
    version: int | None = None


class FlowInvalid(ValueError):
    """The definition does not validate; the message says where and why."""


placeholder_pattern = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class ParsedTemplate:
    """A parsed template: literal text and the names it substitutes."""

    text: str
    names: tuple[str, ...]


def parse_template(text: str, allowed: dict[str, str], where: str) -> ParsedTemplate:
    """Check that every ``{name}`` in ``text`` is a param (of a type that prints) or ``run_id``."""
    found = []
    for name in placeholder_pattern.findall(text):
        if name not in allowed:
            raise FlowInvalid(f"{where}: unknown name {{{name}}} (params: {', '.join(sorted(allowed)) or 'none'})")
        if allowed[name] in ("amount", "decimal"):
            raise FlowInvalid(f"{where}: {{{name}}} is {allowed[name]} and cannot be part of a text")
        found.append(name)
    if "{" in placeholder_pattern.sub("", text) or "}" in placeholder_pattern.sub("", text):
        raise FlowInvalid(f"{where}: unbalanced braces in {text!r}")
    return ParsedTemplate(text, tuple(found))


@dataclass(frozen=True)
class Flow:
    """A validated definition, ready to compile runs (expressions parsed once)."""

    spec: FlowSpec
    canonical: bytes
    param_kinds: dict[str, Kind]
    expressions: dict[str, expressions.Node]  # expression text -> its tree
    computed_kinds: dict[str, Kind]
    amount_kinds: dict[str, Kind] = field(default_factory=dict)  # expression text -> its kind, filled as runs compile


_decoder = msgspec.json.Decoder(FlowSpec)
_encoder = msgspec.json.Encoder(order="sorted")


def decode(data: bytes | dict[str, Any]) -> FlowSpec:
    """The spec from JSON bytes or an already-parsed object (YAML); schema errors are FlowInvalid."""
    try:
        if isinstance(data, bytes):
            return _decoder.decode(data)
        return msgspec.convert(data, FlowSpec, strict=True)
    except msgspec.ValidationError as error:
        raise FlowInvalid(f"definition: {error}") from None
    except msgspec.DecodeError as error:
        raise FlowInvalid(f"definition is not valid JSON: {error}") from None


def canonical_bytes(spec: FlowSpec) -> bytes:
    return _encoder.encode(msgspec.structs.replace(spec, name=None, version=None))


def load(data: bytes | dict[str, Any]) -> Flow:
    """Decode and validate a definition (raises :class:`FlowInvalid`)."""
    spec = decode(data)
    return validate(spec)


def validate(spec: FlowSpec) -> Flow:
    parsed: dict[str, expressions.Node] = {}
    template_names = {name: param.type for name, param in spec.params.items()}
    template_names["run_id"] = "text"
    if "run_id" in spec.params:
        raise FlowInvalid("params.run_id: the name run_id is the run's own id")
    # Asset references: a template that names asset params (or a literal asset).
    param_kinds: dict[str, Kind] = {}
    for name, param in spec.params.items():
        where = f"params.{name}"
        if param.type == "amount":
            if param.asset is None:
                raise FlowInvalid(f"{where}: an amount param names its asset (\"asset\": \"{{asset}}\" or \"USD\")")
            _asset_template(param.asset, spec, f"{where}.asset")
            param_kinds[name] = amount_kind(param.asset)
        elif param.asset is not None:
            raise FlowInvalid(f"{where}: only amount params have an asset")
        elif param.type in ("decimal", "integer"):
            param_kinds[name] = NUMBER
        if param.default is not None and isinstance(param.default, int) != (param.type == "integer"):
            raise FlowInvalid(f"{where}.default: must be {'an integer' if param.type == 'integer' else 'a string'}")
    kinds = dict(param_kinds)
    expand: dict[str, expressions.Node] = {}
    computed_kinds: dict[str, Kind] = {}
    for index, computed in enumerate(spec.computed):
        where = f"computed[{index}]"
        if computed.name in kinds or computed.name in spec.params or computed.name == "run_id":
            raise FlowInvalid(f"{where}.name: {computed.name!r} is already a param or computed value")
        node = _expression(computed.expr, parsed, f"{where}.expr")
        kind = _kind(node, kinds, f"{where}.expr")
        if computed.type == "amount":
            if computed.asset is None:
                raise FlowInvalid(f"{where}: a computed amount names its asset")
            _asset_template(computed.asset, spec, f"{where}.asset")
            if kind.name == "amount" and kind.asset != computed.asset:
                raise FlowInvalid(
                    f"{where}.expr: is an amount of {kind.asset}, not of {computed.asset} (write units(x) * rate to convert)"
                )
            if kind == BOOL:
                raise FlowInvalid(f"{where}.expr: is a condition, not an amount")
            declared = amount_kind(computed.asset)
        else:
            if computed.asset is not None or computed.rounding is not None:
                raise FlowInvalid(f"{where}: a decimal is exact: no asset, no rounding")
            if kind.name not in ("number", "literal"):
                raise FlowInvalid(f"{where}.expr: is {kind.describe()}, not a decimal")
            declared = NUMBER
        if computed.rounding is None:
            expand[computed.name] = node  # exact: the balance check may look through it
        kinds[computed.name] = declared
        computed_kinds[computed.name] = declared
    for index, condition in enumerate(spec.checks):
        where = f"checks[{index}].expr"
        if _kind(_expression(condition.expr, parsed, where), kinds, where) != BOOL:
            raise FlowInvalid(f"{where}: a check is a condition (a comparison)")
    step_names: set[str] = set()
    if spec.mode == "atomic" and len(spec.steps) != 1:
        raise FlowInvalid("steps: an atomic flow has exactly one step (one all-or-nothing command)")
    for index, step in enumerate(spec.steps):
        where = f"steps[{index}]"
        if step.name in step_names or step.name in reserved_step_names:
            raise FlowInvalid(f"{where}.name: {step.name!r} is used twice or reserved")
        step_names.add(step.name)
        kind = _command(step, spec, kinds, parsed, expand, template_names, where)
        if spec.mode == "atomic":
            if step.compensation is not None:
                raise FlowInvalid(f"{where}.compensation: an atomic flow undoes nothing: its one command is all or nothing")
            continue
        if step.compensation == "compensate":
            if kind not in compensable_kinds:
                raise FlowInvalid(f"{where}.compensation: the core compensates only {', '.join(compensable_kinds)}; give a command")
        elif step.compensation is not None:
            _command(step.compensation, spec, kinds, parsed, expand, template_names, f"{where}.compensation")
        elif index < len(spec.steps) - 1:
            raise FlowInvalid(f"{where}.compensation: every step but the last needs one, to undo it when a later step fails")
    return Flow(spec, canonical_bytes(spec), param_kinds, parsed, computed_kinds)


def _asset_template(text: str, spec: FlowSpec, where: str) -> None:
    for name in placeholder_pattern.findall(text):
        param = spec.params.get(name)
        if param is None or param.type not in ("asset", "text"):
            raise FlowInvalid(f"{where}: {{{name}}} is not an asset param")
    if not placeholder_pattern.findall(text) and not re.fullmatch(rf"[A-Za-z0-9._:-]{{1,{asset_length_max}}}", text):
        raise FlowInvalid(f"{where}: {text!r} is not an asset name")


def _expression(text: str, parsed: dict[str, expressions.Node], where: str) -> expressions.Node:
    try:
        node = parsed.get(text) or expressions.parse(text)
    except ExpressionError as error:
        raise FlowInvalid(f"{where}: {error} in {text!r}") from None
    parsed[text] = node
    return node


def _kind(node: expressions.Node, kinds: dict[str, Kind], where: str) -> Kind:
    try:
        return expressions.check(node, kinds)
    except ExpressionError as error:
        raise FlowInvalid(f"{where}: {error}") from None


def _amount(
    text: str, kinds: dict[str, Kind], parsed: dict[str, expressions.Node], where: str, asset: str | None = None
) -> tuple[expressions.Node, str]:
    """An amount expression; returns its tree and its asset reference."""
    node = _expression(text, parsed, where)
    kind = _kind(node, kinds, where)
    if kind.name != "amount":
        if kind == LITERAL and asset is not None:
            return node, asset
        raise FlowInvalid(f"{where}: is {kind.describe()}; an amount is needed here")
    if asset is not None and kind.asset != asset:
        raise FlowInvalid(f"{where}: is an amount of {kind.asset}, the command moves {asset}")
    assert kind.asset is not None
    return node, kind.asset


def _command(
    command: CommandSpec,
    spec: FlowSpec,
    kinds: dict[str, Kind],
    parsed: dict[str, expressions.Node],
    expand: dict[str, expressions.Node],
    template_names: dict[str, str],
    where: str,
) -> str:
    """Validate one command of a step; returns its kind."""
    chosen = [kind for kind in command_kinds if getattr(command, kind) is not None]
    if len(chosen) != 1:
        raise FlowInvalid(f"{where}: give exactly one command of {', '.join(command_kinds)}")
    kind = chosen[0]
    body = getattr(command, kind)
    where = f"{where}.{kind}"

    def template(text: str, field: str) -> None:
        parse_template(text, template_names, f"{where}.{field}")

    if isinstance(body, TransferSpec):
        template(body.from_account, "from")
        template(body.to_account, "to")
        _amount(body.amount, kinds, parsed, f"{where}.amount")
        for key, value in (body.metadata or {}).items():
            template(value, f"metadata.{key}")
    elif isinstance(body, BatchSpec | TccTrySpec):
        sums: dict[str, expressions.Linear] = {}
        for index, leg in enumerate(body.legs):
            leg_where = f"{where}.legs[{index}]"
            template(leg.account, f"legs[{index}].account")
            if (leg.debit is None) == (leg.credit is None):
                raise FlowInvalid(f"{leg_where}: give exactly one of debit and credit")
            text = leg.debit if leg.debit is not None else leg.credit
            assert text is not None
            node, asset = _amount(text, kinds, parsed, f"{leg_where}.{'debit' if leg.debit is not None else 'credit'}")
            sign = -1 if leg.debit is not None else 1
            total = sums.setdefault(asset, {})
            for term, coefficient in expressions.linear(node, expand).items():
                total[term] = total.get(term, 0) + sign * coefficient
            for key, value in (leg.metadata or {}).items():
                template(value, f"legs[{index}].metadata.{key}")
        for index, condition in enumerate(body.preconditions):
            template(condition.account, f"preconditions[{index}].account")
            given = [name for name in ("expected_balance", "min_balance", "max_balance") if getattr(condition, name) is not None]
            if not given:
                raise FlowInvalid(f"{where}.preconditions[{index}]: give at least one condition")
            for name in given:
                _amount(getattr(condition, name), kinds, parsed, f"{where}.preconditions[{index}].{name}")
        if body.balanced:
            for asset, total in sorted(sums.items()):
                left = {term: coefficient for term, coefficient in total.items() if coefficient != 0}
                if left:
                    terms = " + ".join(f"{coefficient} * {term or '1'}" for term, coefficient in sorted(left.items()))
                    raise FlowInvalid(f"{where}: says balanced, but its legs in {asset} do not sum to zero (credits - debits = {terms})")
        if isinstance(body, TccTrySpec):
            template(body.txn_id, "txn_id")
            if body.timeout_s is not None:
                node = _expression(body.timeout_s, parsed, f"{where}.timeout_s")
                if _kind(node, kinds, f"{where}.timeout_s") not in (NUMBER, LITERAL):
                    raise FlowInvalid(f"{where}.timeout_s: a number of seconds (1..{timeout_s_max})")
    elif isinstance(body, ReserveSpec | ReleaseSpec):
        template(body.account, "account")
        template(body.reservation_id, "reservation_id")
        if body.amount is not None:
            _amount(body.amount, kinds, parsed, f"{where}.amount")
    else:
        assert isinstance(body, TxnSpec)
        template(body.txn_id, "txn_id")
    return kind


assert flow_legs_max <= legs_max, "a flow's command must fit the core's bound on legs"
