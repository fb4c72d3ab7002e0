"""parse_amount / format_amount against the API grammar ``^-?(0|[1-9][0-9]*)(\\.[0-9]{1,S})?$`` (docs/api.md)."""

import re
from decimal import Decimal

import pytest

from coffer.core.amounts import AmountError, format_amount, parse_amount


def grammar(scale: int) -> re.Pattern[str]:
    fraction = rf"(\.[0-9]{{1,{scale}}})?" if scale else ""
    return re.compile(rf"-?(0|[1-9][0-9]*){fraction}", re.ASCII)


# (text, scale, signed, value in minor units)
accepted = [
    ("0", 0, False, 0),
    ("7", 0, False, 7),
    ("1234567890", 0, False, 1_234_567_890),
    ("-7", 0, True, -7),
    ("0", 2, False, 0),
    ("0.0", 2, False, 0),
    ("0.00", 2, False, 0),
    ("0.01", 2, False, 1),
    ("0.1", 2, False, 10),
    ("10", 2, False, 1000),
    ("10.5", 2, False, 1050),
    ("10.50", 2, False, 1050),
    ("1234.50", 2, False, 123_450),
    ("100", 2, False, 10_000),
    ("-0.01", 2, True, -1),
    # negative zero is in the API grammar where a sign is allowed, and means zero
    ("-0", 2, True, 0),
    ("-0.00", 2, True, 0),
    ("-0.0", 2, True, 0),
    ("-0", 0, True, 0),
    ("-10.5", 2, True, -1050),
    ("10.5", 2, True, 1050),
    ("1", 8, False, 100_000_000),
    ("0.00000001", 8, False, 1),
    ("21000000.12345678", 8, False, 2_100_000_012_345_678),
    ("-0.5", 8, True, -50_000_000),
    ("1", 18, False, 10**18),
    ("0.000000000000000001", 18, False, 1),
    ("1.456", 18, False, 1_456 * 10**15),
    ("-1.5", 18, True, -15 * 10**17),
    # the widest amount: a signed 64-bit integer of minor units, at scale 0 and 18
    ("9223372036854775807", 0, False, 2**63 - 1),
    ("-9223372036854775807", 0, True, -(2**63 - 1)),
    ("9.223372036854775807", 18, False, 2**63 - 1),
]


@pytest.mark.parametrize(("text", "scale", "signed", "value"), accepted)
def test_accepted_amounts_parse_to_exact_minor_units(text: str, scale: int, signed: bool, value: int) -> None:
    assert grammar(scale).fullmatch(text)  # the table itself follows the contract
    parsed = parse_amount(text, scale, signed=signed)
    assert type(parsed) is int
    assert parsed == value


# (input, scale, signed)
rejected = [
    # JSON numbers, bools, null and other non-strings: a float has already lost precision
    (5, 2, False),
    (0, 2, False),
    (5.0, 2, False),
    (0.1, 2, False),
    (True, 2, False),
    (False, 2, False),
    (None, 2, False),
    (Decimal("5"), 2, False),
    (b"5", 2, False),
    (["5"], 2, False),
    # exponents, special values, signs
    ("1e3", 2, False),
    ("1E3", 2, False),
    ("1.5e2", 2, False),
    ("1e-2", 2, True),
    ("NaN", 2, False),
    ("nan", 2, False),
    ("Infinity", 2, False),
    ("-Infinity", 2, True),
    ("inf", 2, False),
    ("+5", 2, False),
    ("+5", 2, True),
    ("--5", 2, True),
    ("- 5", 2, True),
    # shape
    (".5", 2, False),
    ("5.", 2, False),
    (".", 2, False),
    ("-", 2, True),
    ("", 2, False),
    ("1.2.3", 2, False),
    ("0x10", 2, False),
    ("1,000", 2, False),
    ("1_000", 2, False),
    ("1 000", 2, False),
    # white space
    (" 5", 2, False),
    ("5 ", 2, False),
    ("5\n", 2, False),
    ("\t5", 2, False),
    ("5\u00a0", 2, False),
    # leading zeros
    ("05", 2, False),
    ("00", 2, False),
    ("00.5", 2, False),
    ("-05", 2, True),
    # more decimals than the scale, even zeros: never rounded
    ("1.234", 2, False),
    ("1.230", 2, False),
    ("0.001", 2, False),
    ("1.0", 0, False),
    ("1.5", 0, False),
    ("0.000000001", 8, False),
    ("0.0000000000000000001", 18, False),
    # negatives where the amount is not signed
    ("-5", 2, False),
    ("-0.01", 2, False),
    ("-0", 2, False),
    # non-ASCII digits
    ("\uff15", 2, False),  # fullwidth 5
    ("\uff11.00", 2, False),  # fullwidth 1
    ("\u0661\u0662", 2, False),  # Arabic-Indic 12
    ("1\u0660", 2, False),
    ("²", 2, False),
    # absurd sizes (also must not be slow)
    ("1" * 10_000, 2, False),
    ("1" + "0" * 100, 0, False),
    ("0." + "0" * 10_000, 2, False),
    ("9" * 1_000_000, 18, False),
]


@pytest.mark.parametrize(("value", "scale", "signed"), rejected)
def test_rejected_inputs_raise_amount_error(value: object, scale: int, signed: bool) -> None:
    with pytest.raises(AmountError):
        parse_amount(value, scale, signed=signed)


def test_amount_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_amount("1.234", 2)


@pytest.mark.parametrize(
    ("text", "scale", "canonical"),
    [
        ("10", 2, "10.00"),
        ("10.5", 2, "10.50"),
        ("10.50", 2, "10.50"),
        ("0", 2, "0.00"),
        ("0.0", 2, "0.00"),
        ("0.01", 2, "0.01"),
        ("-1.5", 2, "-1.50"),
        ("-0.01", 2, "-0.01"),
        ("7", 0, "7"),
        ("-7", 0, "-7"),
        ("0", 0, "0"),
        ("0", 18, "0.000000000000000000"),
        ("1", 18, "1.000000000000000000"),
        ("-0.000000000000000001", 18, "-0.000000000000000001"),
        ("21000000", 8, "21000000.00000000"),
    ],
)
def test_format_of_parse_is_the_canonical_spelling(text: str, scale: int, canonical: str) -> None:
    assert format_amount(parse_amount(text, scale, signed=True), scale) == canonical
    # the canonical spelling is a fixed point
    assert format_amount(parse_amount(canonical, scale, signed=True), scale) == canonical


@pytest.mark.parametrize(("text", "scale", "signed", "value"), accepted)
def test_round_trip_of_every_accepted_amount(text: str, scale: int, signed: bool, value: int) -> None:
    formatted = format_amount(parse_amount(text, scale, signed=signed), scale)
    assert parse_amount(formatted, scale, signed=signed) == value


@pytest.mark.parametrize(
    ("value", "scale", "text"),
    [
        (0, 0, "0"),
        (0, 2, "0.00"),
        (0, 18, "0.000000000000000000"),
        (5, 0, "5"),
        (-5, 0, "-5"),
        (5, 2, "0.05"),
        (-5, 2, "-0.05"),
        (123, 2, "1.23"),
        (-123, 2, "-1.23"),
        (100, 2, "1.00"),
        (-100, 2, "-1.00"),
        (1, 18, "0.000000000000000001"),
        (-1, 18, "-0.000000000000000001"),
        (10**18, 18, "1.000000000000000000"),
        (-(10**18) - 1, 18, "-1.000000000000000001"),
        (123_450, 2, "1234.50"),
    ],
)
def test_format_prints_the_full_scale(value: int, scale: int, text: str) -> None:
    assert format_amount(value, scale) == text


@pytest.mark.parametrize("scale", [0, 1, 2, 8, 18])
def test_format_always_matches_the_grammar_and_parses_back(scale: int) -> None:
    values = [0, 1, -1, 9, 10, 11, 99, 100, 101, 10**scale - 1, 10**scale, -(10**scale), 10**scale + 1, 7 * 10**17 + 3, 2**63 - 1]
    values += [2**63, 2**64, -(2**64), 2**127 - 1, -(2**127 - 1)]
    pattern = grammar(scale)
    for value in values:
        text = format_amount(value, scale)
        assert pattern.fullmatch(text), text
        assert text.count(".") == (1 if scale else 0)
        if scale:
            assert len(text.split(".")[1]) == scale
        assert parse_amount(text, scale, signed=True) == value


@pytest.mark.parametrize(
    ("text", "scale"),
    [
        (str(2**127), 0),
        (str(-(2**127)), 0),
        ("170141183460469231731.687303715884105728", 18),  # 2^127 wei
        ("1701411834604692317316873037158841057.28", 2),
        ("1" * 40, 2),
    ],
)
def test_amounts_of_2_to_the_127_minor_units_and_beyond_are_refused(text: str, scale: int) -> None:
    with pytest.raises(AmountError, match="beyond"):
        parse_amount(text, scale, signed=True)


@pytest.mark.parametrize(
    ("text", "scale", "value"),
    [
        (str(2**127 - 1), 0, 2**127 - 1),
        (str(-(2**127 - 1)), 0, -(2**127 - 1)),
        ("170141183460469231731.687303715884105727", 18, 2**127 - 1),
        ("10", 18, 10 * 10**18),  # 10 ETH, which a 64-bit ledger cannot hold
        ("100000000000000000000", 18, 10**38),  # 10^20 ETH
        ("1" + "0" * 28 + ".00", 2, 10**30),  # 10^30 minor units at scale 2
        ("9223372036854775808", 0, 2**63),
    ],
)
def test_amounts_up_to_2_to_the_127_minor_units_are_exact(text: str, scale: int, value: int) -> None:
    assert parse_amount(text, scale, signed=True) == value
    assert format_amount(value, scale) == text if "." in text or scale == 0 else True
