"""The expression language: exact arithmetic, types checked before anything runs, rounding modes."""

from fractions import Fraction

import pytest

from coffer.flows import expressions
from coffer.flows.expressions import LITERAL, NUMBER, ExpressionError, amount_kind, check, evaluate, parse, round_to_scale

kinds = {"amount": amount_kind("{asset}"), "fee": amount_kind("{asset}"), "euros": amount_kind("EUR"), "rate": NUMBER}


def value(text: str, **values: Fraction) -> Fraction | bool:
    node = parse(text)
    check(node, kinds | {name: NUMBER for name in values if name not in kinds})
    return evaluate(node, {"amount": Fraction(10050, 100), "fee": Fraction(3), "euros": Fraction(7), "rate": Fraction(11, 10), **values})


def test_arithmetic_is_exact() -> None:
    assert value("amount * 2.9%") == Fraction(10050, 100) * Fraction(29, 1000)
    assert value("amount / 3") == Fraction(10050, 300)
    assert value("max(amount * 1%, 0.30) + fee") == Fraction(10050, 10000) + 3
    assert value("min(amount, fee, 1)") == 1
    assert value("-(amount - fee)") == -Fraction(9750, 100)
    assert value("units(amount) * rate") == Fraction(10050, 100) * Fraction(11, 10)
    assert value("amount / fee") == Fraction(10050, 300)
    assert value("fee < amount and not (fee == 0) or amount < 0") is True
    assert value("2.5%%") == Fraction(25, 100000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amount + euros", "mixes an amount of {asset} and an amount of EUR"),
        ("amount + rate", "mixes an amount of {asset} and a number"),
        ("amount * fee", "an amount times an amount"),
        ("rate / amount", "divided by an amount"),
        ("amount%", "a percent is of a number"),
        ("nope * 2", "unknown name 'nope'"),
        ("pow(amount, 2)", "unknown function 'pow'"),
        ("amount < fee < 3", "comparisons do not chain"),
        ("amount and fee", "'and' takes conditions"),
        ("min(amount)", "at least two"),
        ("units(rate)", "units(x) takes one amount"),
        ("amount +", "ends too early"),
        ("amount ) ", "unexpected ')'"),
        ("__import__('os')", "unexpected"),
        ("1e5", "unexpected"),
        ("amount; fee", "unexpected"),
        ("(" * 40 + "1" + ")" * 40, "nests deeper"),
        ("1" * 41, "more than 40 digits"),
    ],
)
def test_errors_are_found_before_running(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(parse(text), kinds)


def test_literals_adapt_and_kinds_come_out_right() -> None:
    assert check(parse("amount - 0.30"), kinds) == amount_kind("{asset}")
    assert check(parse("1 + 2%"), kinds) == LITERAL
    assert check(parse("rate * 2"), kinds) == NUMBER
    assert check(parse("amount / fee"), kinds) == NUMBER


def test_division_by_zero_and_size_are_run_errors() -> None:
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate(parse("amount / rate"), {"amount": Fraction(1), "rate": Fraction(0)})
    with pytest.raises(ExpressionError, match="beyond 120 digits"):
        evaluate(parse("rate * rate * rate * rate"), {"rate": Fraction(10**39)})


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("down", [2, -2, 2, -2, 2]),
        ("up", [3, -3, 3, -3, 3]),
        ("floor", [2, -3, 2, -3, 2]),
        ("ceiling", [3, -2, 3, -2, 3]),
        ("half_up", [3, -3, 2, -2, 3]),
        ("half_down", [2, -2, 2, -2, 3]),
        ("half_even", [2, -2, 2, -2, 3]),
    ],
)
def test_rounding_modes(mode: str, expected: list[int]) -> None:
    # 0.025, -0.025, 0.0249, -0.0249, 0.0251 at scale 2 (in cents: 2.5, -2.5, 2.49, -2.49, 2.51)
    values = [Fraction(25, 1000), Fraction(-25, 1000), Fraction(249, 10000), Fraction(-249, 10000), Fraction(251, 10000)]
    assert [round_to_scale(v, 2, mode) for v in values] == expected
    assert round_to_scale(Fraction(35, 1000), 2, "half_even") == 4  # to the even neighbour
    assert round_to_scale(Fraction(7), 0, mode) == 7  # exact stays exact


def test_linear_forms_see_through_exact_sums() -> None:
    net = parse("amount - fee")
    total = expressions.linear(parse("net + fee - amount"), {"net": net})
    assert total == {}
    assert expressions.linear(parse("amount * 2 / 4"), {}) == {"amount": Fraction(1, 2)}
    assert "max(amount, fee)" in expressions.linear(parse("max(amount, fee)"), {})
