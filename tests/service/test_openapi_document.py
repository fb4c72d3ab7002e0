"""The OpenAPI document is exact: its amount schemas accept what the server's parser accepts.

Each of the three amount schemas is checked with a JSON Schema validator against the server's own
translation of a request (:func:`coffer.server.command_table.to_command`) on a table of values, at the
widest scale (18), where the pattern's decimal count is the server's. The one rule a pattern cannot
hold is the magnitude bound (``amount_max`` minor units, so a number of digits that depends on the
scale): the schemas say it in words, and the table shows the server refusing just past it.
"""

import jsonschema_rs
import pytest

from coffer.core.amounts import amount_digits_max, amount_max, format_amount, scale_max
from coffer.server import command_table, openapi
from coffer.server import requests as bodies

scale = scale_max
# Values in the table stay below 9.2 at scale 18, inside the bound of 64-bit and of wider amounts
# alike; the bound has its own test.
_scales = bodies.Scales(lambda account_id: ("WIDE", scale), lambda asset: scale if asset == "WIDE" else None)

table = [
    "1",
    "1.5",
    "0.01",
    "1.000000000000000001",
    "0.000000000000000001",
    "0",
    "0.0",
    "0.000000000000000000",
    "-0",
    "-0.00",
    "-1",
    "-1.00",
    "-0.000000000000000001",
    "1.0000000000000000001",
    "+5",
    ".5",
    "5.",
    "-.5",
    "1e3",
    "1E3",
    "NaN",
    "Infinity",
    " 1",
    "1 ",
    "01",
    "-01",
    "00.1",
    "1,5",
    "0x10",
    "--1",
    "-",
    "",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to the grammar
    "9" * (amount_digits_max + 3),  # longer than any amount: refused before its value is read
]


def _accepts(kind: str, text: str) -> bool:
    body: bodies.CommandBody
    if kind == "positive":
        body = bodies.TransferBody(dedup_id="d", from_account_id="a", to_account_id="b", amount=text, asset="WIDE")
        command = "transfer"
    elif kind == "nonzero":
        body = bodies.BatchOperationBody(dedup_id="d", legs=[bodies.LegBody(account_id="a", amount=text, asset="WIDE")])
        command = "batch_operation"
    else:
        body = bodies.UpdateLimitsBody(dedup_id="d", account_id="a", lower_limit=text)
        command = "update_limits"
    try:
        command_table.to_command(command, body, _scales)
    except bodies.RequestError as error:
        assert error.code == "INVALID_AMOUNT"
        return False
    return True


schemas = {
    "positive": openapi.positive_amount,
    "nonzero": openapi.signed_nonzero_amount,
    "signed": openapi.signed_amount,
}


@pytest.mark.parametrize("kind", sorted(schemas))
def test_each_amount_schema_accepts_what_the_server_accepts(kind: str) -> None:
    validator = jsonschema_rs.validator_for(schemas[kind])
    disagreements = [(text, validator.is_valid(text), _accepts(kind, text)) for text in table]
    assert [row for row in disagreements if row[1] != row[2]] == []
    # Positive means what it says; zero and a sign are refused where they do not belong.
    if kind == "positive":
        assert not validator.is_valid("0") and not validator.is_valid("-1.00") and validator.is_valid("0.01")
    if kind == "nonzero":
        assert not validator.is_valid("-0") and validator.is_valid("-1.00")
    if kind == "signed":
        assert validator.is_valid("-0") and validator.is_valid("0")


@pytest.mark.parametrize("kind", sorted(schemas))
def test_the_magnitude_bound_is_the_servers_and_is_stated(kind: str) -> None:
    largest, beyond = format_amount(amount_max, scale), format_amount(amount_max + 1, scale)
    validator = jsonschema_rs.validator_for(schemas[kind])
    assert _accepts(kind, largest) and validator.is_valid(largest)
    assert not _accepts(kind, beyond) and validator.is_valid(beyond) == (len(beyond) <= amount_digits_max + 2)
    assert str(amount_max) in schemas[kind]["description"]


def test_every_amount_field_has_the_schema_the_server_applies() -> None:
    components = openapi.openapi_document()["components"]["schemas"]

    def ref(struct: str, field: str) -> str:
        prop = components[struct]["properties"][field]
        option = prop["anyOf"][0] if "anyOf" in prop else prop
        return str(option["$ref"]).rsplit("/", 1)[1]

    assert ref("TransferBody", "amount") == "PositiveAmount"
    assert ref("ReserveBody", "amount") == "PositiveAmount"
    assert ref("ReleaseBody", "amount") == "PositiveAmount"
    assert ref("LegBody", "amount") == "SignedNonZeroAmount"
    for struct, field in [
        ("CreateAccountBody", "lower_limit"),
        ("CreateAccountBody", "upper_limit"),
        ("UpdateLimitsBody", "lower_limit"),
        ("UpdateLimitsBody", "upper_limit"),
        ("TransferBody", "expected_from_balance"),
        ("PreconditionBody", "min_balance"),
    ]:
        assert ref(struct, field) == "SignedAmount"
    # Every amount field of every request body is one of the three.
    for struct, schema in components.items():
        for field in schema.get("properties", {}):
            if field in bodies.amount_fields and struct.endswith("Body"):
                assert ref(struct, field) in ("PositiveAmount", "SignedNonZeroAmount", "SignedAmount")
