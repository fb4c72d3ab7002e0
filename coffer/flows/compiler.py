"""From a validated flow and a run's params to the core commands it produces (API bodies).

Method, in two passes because amounts need scales and scales need the ledger:

1. :func:`prepare` reads the non-amount params (accounts, assets, texts, numbers), renders every
   asset reference, and says which assets' scales and which accounts the run needs;
2. :func:`compile_run` parses the amount params at their asset's scale (exactly: more decimals
   than the scale is an error, never a rounding), evaluates the computed values in order
   (rounding an amount to its scale with its named mode, or requiring it exact), evaluates the
   checks, and renders each step's command as the body of its own API endpoint, amounts as
   decimal strings at their scale, with a ``dedup_id`` derived from the run's.

Dedup ids: ``fl:<run_id>:<step>`` (``:<step>.undo`` for its compensation, ``:finish`` for the run's
record), or ``fh:<first 40 hex of SHA-256(run_id)>:<step>`` when that would pass 128 characters.
Every step's id is a function of the run's, so a resumed or retried run replays what was applied
instead of applying it again.
"""

import functools
import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from coffer.core.amounts import AmountError, format_amount, parse_amount
from coffer.core.commands import (
    flow_dedup_id_prefix,
    flow_hashed_dedup_id_prefix,
    id_length_max,
    reserved_id_refusal,
    timeout_s_max,
)
from coffer.flows import expressions
from coffer.flows.definition import (
    BatchSpec,
    CommandSpec,
    Flow,
    LegSpec,
    PreconditionSpec,
    ReleaseSpec,
    ReserveSpec,
    TccTrySpec,
    TransferSpec,
    TxnSpec,
    command_kinds,
    placeholder_pattern,
    text_length_max,
)
from coffer.flows.expressions import ExpressionError

integer_max = 2**63 - 1
template_cache_size_max = 4096  # parsed templates kept (a flow's templates never change)
_id_characters = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


class ParamsInvalid(ValueError):
    """The params do not fit the flow (a 422 naming the param)."""


class CheckFailed(ValueError):
    """A check of the flow is false for these params (``FLOW_CHECK_FAILED``)."""


def derived_dedup_id(run_id: str, step: str) -> str:
    direct = f"{flow_dedup_id_prefix}{run_id}:{step}"
    if len(direct) <= id_length_max:
        return direct
    return f"{flow_hashed_dedup_id_prefix}{hashlib.sha256(run_id.encode()).hexdigest()[:40]}:{step}"


@dataclass
class Prepared:
    flow: Flow
    run_id: str
    texts: dict[str, str]  # account, asset, text and integer params, as text (for templates)
    numbers: dict[str, Fraction]  # decimal and integer params
    raw_amounts: dict[str, str]  # amount params as given
    assets: dict[str, str]  # asset reference -> asset name
    accounts: list[str] = field(default_factory=list)  # accounts the run names (to find scales)


@dataclass
class Step:
    name: str
    kind: str
    body: dict[str, Any]
    compensation: tuple[str, dict[str, Any]] | None


@dataclass
class Compiled:
    params: dict[str, Any]  # as normalized: amounts at their scale
    computed: dict[str, str]
    steps: list[Step]


@functools.lru_cache(maxsize=template_cache_size_max)
def _template_parts(text: str) -> tuple[str, ...]:
    """``text`` cut at its placeholders: literal, name, literal, name, ..., literal."""
    return tuple(placeholder_pattern.split(text))


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{name}`` replaced by its value, in one pass: a value that itself
    holds ``{...}`` (a text param may) is never substituted again."""
    parts = _template_parts(text)
    if len(parts) == 1:
        return text
    rendered = list(parts)
    for index in range(1, len(parts), 2):
        value = values.get(parts[index])
        rendered[index] = "{" + parts[index] + "}" if value is None else value
    return "".join(rendered)


def prepare(flow: Flow, params: dict[str, Any], run_id: str) -> Prepared:
    if not isinstance(params, dict):
        raise ParamsInvalid("params must be an object")
    spec = flow.spec
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ParamsInvalid(f"unknown params: {', '.join(unknown)} (the flow takes {', '.join(sorted(spec.params))})")
    texts: dict[str, str] = {"run_id": run_id}
    numbers: dict[str, Fraction] = {}
    raw_amounts: dict[str, str] = {}
    for name, param in spec.params.items():
        value = params.get(name, param.default)
        if value is None:
            raise ParamsInvalid(f"params.{name}: missing ({param.type})")
        if param.type == "integer":
            if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 20:
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or not -integer_max - 1 <= value <= integer_max:
                raise ParamsInvalid(f"params.{name}: must be an integer")
            numbers[name] = Fraction(value)
            texts[name] = str(value)
            continue
        if not isinstance(value, str):
            raise ParamsInvalid(f"params.{name}: must be a string ({param.type})")
        if param.type in ("account", "asset"):
            length_max = id_length_max if param.type == "account" else 32
            if not 0 < len(value) <= length_max or not set(value) <= _id_characters:
                raise ParamsInvalid(f"params.{name}: {value!r} is not an {param.type} id (1 to {length_max} of A-Za-z0-9._:-)")
            texts[name] = value
        elif param.type == "text":
            if len(value) > text_length_max:
                raise ParamsInvalid(f"params.{name}: at most {text_length_max} characters")
            texts[name] = value
        elif param.type == "decimal":
            try:
                numbers[name] = Fraction(parse_amount(value, 18, signed=True), 10**18)
            except AmountError as error:
                raise ParamsInvalid(f"params.{name}: {error}") from None
        else:
            raw_amounts[name] = value
    assets: dict[str, str] = {}
    references = [param.asset for param in spec.params.values() if param.asset] + [c.asset for c in spec.computed if c.asset]
    for reference in references:
        asset = render(reference, texts)
        if not 0 < len(asset) <= 32 or not set(asset) <= _id_characters:
            raise ParamsInvalid(f"asset {reference} is {asset!r}, not an asset name")
        assets[reference] = asset
    accounts = [texts[name] for name, param in spec.params.items() if param.type == "account"]
    return Prepared(flow, run_id, texts, numbers, raw_amounts, assets, accounts)


def compile_run(prepared: Prepared, scales: dict[str, int]) -> Compiled:
    """The commands of the run; ``scales`` has the scale of every asset in ``prepared.assets``."""
    flow = prepared.flow
    spec = flow.spec

    def scale_of(reference: str) -> int:
        asset = prepared.assets[reference]
        if asset not in scales:
            raise ParamsInvalid(f"no account of this ledger holds {asset}: its scale is unknown")
        return scales[asset]

    values: dict[str, Fraction | bool] = dict(prepared.numbers)
    # Amount params and computed amounts as the legs print them: (minor units, asset, scale).
    minors: dict[str, tuple[int, str, int]] = {}
    normalized: dict[str, Any] = {name: value for name, value in prepared.texts.items() if name != "run_id"}
    for name in spec.params:
        if spec.params[name].type == "integer":
            normalized[name] = int(prepared.numbers[name])
        elif spec.params[name].type == "decimal":
            normalized[name] = _decimal_text(prepared.numbers[name])
    for name, text in prepared.raw_amounts.items():
        reference = spec.params[name].asset
        assert reference is not None
        scale = scale_of(reference)
        try:
            minor = parse_amount(text, scale)
        except AmountError as error:
            raise ParamsInvalid(f"params.{name}: {error}") from None
        values[name] = Fraction(minor, 10**scale)
        normalized[name] = format_amount(minor, scale)
        minors[name] = (minor, prepared.assets[reference], scale)
    computed_view: dict[str, str] = {}
    for computed in spec.computed:
        try:
            value = expressions.evaluate(flow.expressions[computed.expr], values)
        except ExpressionError as error:
            raise ParamsInvalid(f"computed {computed.name}: {error}") from None
        assert isinstance(value, Fraction)
        if computed.type == "amount":
            assert computed.asset is not None
            scale = scale_of(computed.asset)
            minor = _minor(value, scale, computed.rounding, f"computed {computed.name}")
            value = Fraction(minor, 10**scale)
            computed_view[computed.name] = format_amount(minor, scale)
            minors[computed.name] = (minor, prepared.assets[computed.asset], scale)
        else:
            computed_view[computed.name] = _decimal_text(value)
        values[computed.name] = value
    for condition in spec.checks:
        try:
            holds = expressions.evaluate(flow.expressions[condition.expr], values)
        except ExpressionError as error:
            raise ParamsInvalid(f"check {condition.expr!r}: {error}") from None
        if not holds:
            raise CheckFailed(f"{condition.message} ({condition.expr})")
    builder = _Builder(prepared, values, minors, scale_of)
    steps = []
    for step in spec.steps:
        dedup_id = derived_dedup_id(prepared.run_id, step.name)
        kind, body = builder.command(step, dedup_id, step.name)
        compensation: tuple[str, dict[str, Any]] | None = None
        undo_id = derived_dedup_id(prepared.run_id, f"{step.name}.undo")
        if step.compensation == "compensate":
            compensation = ("compensate", {"dedup_id": undo_id, "original_dedup_id": dedup_id})
        elif isinstance(step.compensation, CommandSpec):
            compensation = builder.command(step.compensation, undo_id, f"{step.name} compensation")
        steps.append(Step(step.name, kind, body, compensation))
    return Compiled(normalized, computed_view, steps)


def _decimal_text(value: Fraction) -> str:
    """An exact decimal spelling of a rational, or the fraction when it has no finite one."""
    denominator = value.denominator
    for scale in range(0, 41):
        if (10**scale) % denominator == 0:
            return format_amount(value.numerator * (10**scale // denominator), scale)
    return f"{value.numerator}/{value.denominator}"


def _minor(value: Fraction, scale: int, rounding: str | None, where: str) -> int:
    if rounding is not None:
        return expressions.round_to_scale(value, scale, rounding)
    scaled = value * 10**scale
    if scaled.denominator != 1:
        raise ParamsInvalid(f"{where} is {_decimal_text(value)}, not exact at scale {scale}: give it a rounding")
    return scaled.numerator


class _Builder:
    def __init__(self, prepared: Prepared, values: dict[str, Fraction | bool], minors: dict[str, tuple[int, str, int]], scale_of: Any) -> None:
        self.prepared = prepared
        self.values = values
        self.minors = minors
        self.scale_of = scale_of
        self.flow = prepared.flow
        self.kinds = prepared.flow.amount_kinds

    def text(self, template: str) -> str:
        return render(template, self.prepared.texts)

    def amount(self, text: str, where: str) -> tuple[int, str, int]:
        """(minor units, asset, scale) of an amount expression."""
        node = self.flow.expressions[text]
        kind = self.kinds.get(text)
        if kind is None:
            kind = self.kinds[text] = expressions.check(node, self.flow.param_kinds | self.flow.computed_kinds)
        assert kind.name == "amount" and kind.asset is not None, kind
        if isinstance(node, expressions.Name) and node.name in self.minors:
            return self.minors[node.name]  # a leg of a param or computed amount as it is: already exact at its scale
        try:
            value = expressions.evaluate(node, self.values)
        except ExpressionError as error:
            raise ParamsInvalid(f"{where}: {error}") from None
        assert isinstance(value, Fraction)
        scale = self.scale_of(kind.asset)
        return _minor(value, scale, None, where), self.prepared.assets[kind.asset], scale

    def txn_id(self, template: str, where: str) -> str:
        """A step's txn_id: made from params, so it must not take a cross-shard transaction's id."""
        txn_id = self.text(template)
        refusal = reserved_id_refusal("txn_id", txn_id)
        if refusal is not None:
            raise ParamsInvalid(f"{where}: {refusal}")
        return txn_id

    def positive(self, text: str, where: str) -> tuple[str, str]:
        minor, asset, scale = self.amount(text, where)
        if minor <= 0:
            raise ParamsInvalid(f"{where} comes out as {format_amount(minor, scale)}; it must be positive")
        return format_amount(minor, scale), asset

    def legs(self, legs: list[LegSpec], where: str) -> list[dict[str, Any]]:
        built = []
        for index, leg in enumerate(legs):
            text = leg.debit if leg.debit is not None else leg.credit
            assert text is not None
            minor, asset, scale = self.amount(text, f"{where} leg {index}")
            if minor < 0:
                raise ParamsInvalid(f"{where} leg {index} comes out negative ({format_amount(minor, scale)})")
            if minor == 0:
                continue  # a zero fee, say: nothing to move on that account
            signed = -minor if leg.debit is not None else minor
            item: dict[str, Any] = {"account_id": self.text(leg.account), "amount": format_amount(signed, scale), "asset": asset}
            if leg.metadata:
                item["metadata"] = {key: self.text(value) for key, value in leg.metadata.items()}
            built.append(item)
        if not built:
            raise ParamsInvalid(f"{where}: every leg comes out zero")
        return built

    def preconditions(self, conditions: list[PreconditionSpec], where: str) -> list[dict[str, Any]]:
        built = []
        for index, condition in enumerate(conditions):
            item: dict[str, Any] = {"account_id": self.text(condition.account)}
            for name in ("expected_balance", "min_balance", "max_balance"):
                text = getattr(condition, name)
                if text is not None:
                    minor, _, scale = self.amount(text, f"{where} precondition {index}")
                    item[name] = format_amount(minor, scale)
            built.append(item)
        return built

    def command(self, command: CommandSpec, dedup_id: str, where: str) -> tuple[str, dict[str, Any]]:
        kind = next(kind for kind in command_kinds if getattr(command, kind) is not None)
        body = getattr(command, kind)
        built: dict[str, Any] = {"dedup_id": dedup_id}
        if isinstance(body, TransferSpec):
            amount, asset = self.positive(body.amount, f"{where} amount")
            built |= {"from_account_id": self.text(body.from_account), "to_account_id": self.text(body.to_account)}
            built |= {"amount": amount, "asset": asset}
            if body.metadata:
                built["metadata"] = {key: self.text(value) for key, value in body.metadata.items()}
        elif isinstance(body, BatchSpec):
            built["legs"] = self.legs(body.legs, where)
            if body.preconditions:
                built["preconditions"] = self.preconditions(body.preconditions, where)
        elif isinstance(body, TccTrySpec):
            built |= {"txn_id": self.txn_id(body.txn_id, where), "legs": self.legs(body.legs, where)}
            if body.timeout_s is not None:
                seconds = expressions.evaluate(self.flow.expressions[body.timeout_s], self.values)
                assert isinstance(seconds, Fraction)
                if seconds.denominator != 1 or not 1 <= seconds <= timeout_s_max:
                    raise ParamsInvalid(f"{where} timeout_s comes out as {seconds}; it must be a whole 1..{timeout_s_max}")
                built["timeout_s"] = int(seconds)
            if body.preconditions:
                built["preconditions"] = self.preconditions(body.preconditions, where)
        elif isinstance(body, ReserveSpec):
            amount, _ = self.positive(body.amount, f"{where} amount")
            built |= {"account_id": self.text(body.account), "reservation_id": self.text(body.reservation_id), "amount": amount}
        elif isinstance(body, ReleaseSpec):
            built |= {"account_id": self.text(body.account), "reservation_id": self.text(body.reservation_id)}
            if body.amount is not None:
                built["amount"], _ = self.positive(body.amount, f"{where} amount")
        else:
            assert isinstance(body, TxnSpec)
            built["txn_id"] = self.txn_id(body.txn_id, where)
        return kind, built

