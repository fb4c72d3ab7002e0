"""Exact money at the edge: decimal strings in, integers of the minor unit inside.

Every amount Coffer stores is a Python ``int`` counting the asset's minor unit (cents for a
scale-2 asset). Text becomes an integer only through :func:`parse_amount`, which accepts exactly
the grammar of the API contract and never rounds: a value that does not fit the scale is an
error, not a nearby number. :func:`format_amount` is its inverse and always prints the full
scale, so ``format_amount(parse_amount(s, k), k)`` is the canonical spelling of ``s``.
"""

import re

scale_max = 18  # 10**18 minor units per major unit covers every asset we know of (ETH wei).
# Every amount and every balance (available + reserved + pending) is below 2^127 minor units in
# magnitude: 1.7e38, i.e. 1.7e20 units of an 18-decimal asset (wei) or 1.7e36 of a 2-decimal one.
# That holds any real balance of any asset, and it is TigerBeetle's 128-bit width (one bit for the
# sign), so balances move between the two without loss. Python integers do the arithmetic exactly;
# the formats carry them (coffer.core.encoding), and the stores keep them as NUMERIC. A command
# that would go beyond is rejected (an amount: INVALID_AMOUNT; a sum: BALANCE_OUT_OF_RANGE), never
# wrapped or rounded.
amount_max = 2**127 - 1
# Protocol version 1 of the state machine (data written before version 2) bounded everything by a
# signed 64-bit integer; replaying that history must judge it by the rules it was written under.
amount_max_protocol_1 = 2**63 - 1
amount_digits_max = 40  # 2^127 has 39 digits: bounds parsing cost before the range check.

_amount_pattern = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?")


class AmountError(ValueError):
    """The text is not an exact amount at the asset's scale."""


def _parts(text: object, signed: bool) -> tuple[str, str, str]:
    """(sign, whole digits, fraction digits) of an amount in the contract's grammar, or AmountError."""
    if not isinstance(text, str):
        raise AmountError(f"amount must be a decimal string, not {type(text).__name__}")
    if len(text) > amount_digits_max + 2:
        raise AmountError("amount has too many digits")
    match = _amount_pattern.fullmatch(text)
    if match is None:
        raise AmountError(f"amount {text!r} is not a decimal number like '12.34'")
    sign, whole, fraction = match.groups()
    if sign and not signed:
        raise AmountError(f"amount {text!r} must not be negative")
    return sign, whole, fraction or ""


def parse_amount(text: object, scale: int, *, signed: bool = False) -> int:
    """Return the integer number of minor units that ``text`` spells at ``scale``.

    Rejects anything that is not a JSON string of the contract's grammar: numbers (floats would
    already have lost precision), exponents, ``NaN``, a leading ``+``, ``.5``, white space, and
    more decimals than the scale. A ``-`` is accepted only where the amount is ``signed``.
    Positivity is the caller's rule (a leg may not be zero, a transfer must be positive).
    """
    if not 0 <= scale <= scale_max:
        raise AmountError(f"scale must be 0..{scale_max}, got {scale}")
    sign, whole, fraction = _parts(text, signed)
    if len(fraction) > scale:
        raise AmountError(f"amount {text!r} has more than {scale} decimals")
    value = int(whole + fraction.ljust(scale, "0"))
    if value > amount_max:
        raise AmountError(f"amount {text!r} is beyond the largest amount a ledger holds ({amount_max} minor units)")
    return -value if sign else value  # "-0" is in the grammar and means 0


def format_amount(value: int, scale: int) -> str:
    """Spell ``value`` minor units as a decimal string with exactly ``scale`` decimals."""
    assert isinstance(value, int) and not isinstance(value, bool)
    sign = "-" if value < 0 else ""
    digits = str(abs(value))
    if scale == 0:
        return sign + digits
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def amount_sign(text: object, *, signed: bool = False) -> int:
    """-1, 0 or 1: the sign of an amount whose scale is not known yet (grammar checked as by
    :func:`parse_amount` at the widest scale, but not the bound, which depends on the scale)."""
    sign, whole, fraction = _parts(text, signed)
    if len(fraction) > scale_max:
        raise AmountError(f"amount {text!r} has more than {scale_max} decimals")
    if whole == "0" and not fraction.strip("0"):
        return 0
    return -1 if sign else 1
