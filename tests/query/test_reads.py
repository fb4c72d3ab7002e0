"""The shared history reads' parameters: exact times and cursors that only continue their own question."""

import pytest

from coffer.query import reads
from coffer.query.reads import ReadError, decode_cursor, encode_cursor, parse_time_ms

times = [
    # text, rounded down (at_time), rounded up (from_time / to_time)
    ("0", 0, 0),
    ("1738324800", 1_738_324_800_000, 1_738_324_800_000),
    ("1738324800.25", 1_738_324_800_250, 1_738_324_800_250),
    ("1738324800.0005", 1_738_324_800_000, 1_738_324_800_001),
    ("0.001", 1, 1),  # no float on the way: 0.001 * 1000 is 0.999… in binary
    ("2025-01-31T12:00:00Z", 1_738_324_800_000, 1_738_324_800_000),
    ("2025-01-31T12:00:00z", 1_738_324_800_000, 1_738_324_800_000),
    ("2025-01-31T12:00:00.250Z", 1_738_324_800_250, 1_738_324_800_250),
    ("2025-01-31T12:00:00.000500Z", 1_738_324_800_000, 1_738_324_800_001),
    ("2025-01-31T13:00:00+01:00", 1_738_324_800_000, 1_738_324_800_000),
    ("1970-01-01T00:00:00Z", 0, 0),
]


@pytest.mark.parametrize(("text", "down", "up"), times)
def test_times_are_exact_milliseconds(text: str, down: int, up: int) -> None:
    assert parse_time_ms(text, "at_time", round_up=False) == down
    assert parse_time_ms(text, "from_time", round_up=True) == up


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2025-01-31",
        "2025-01-31T12:00:00",
        "-1",
        "1e9",
        ".5",
        "5.",
        "1.2.3",
        "١٢",
        "9" * 65,
        "1969-12-31T23:59:59Z",
        "9" * 30,
    ],
)
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ReadError) as raised:
        parse_time_ms(text, "at_time", round_up=False)
    assert raised.value.status == 422 and raised.value.code == "INVALID_REQUEST" and "at_time" in raised.value.message


def test_a_cursor_continues_only_its_own_route_and_filters() -> None:
    filters = {"from_seq": 5, "to_seq": None, "from_time": None, "to_time": 1000}
    token = encode_cursor("events", filters, 41)
    assert token.isascii() and "=" not in token and len(token) < 60
    assert decode_cursor(token, "events", dict(filters)) == 41
    for route, other in [
        ("history:alice", filters),
        ("events", {**filters, "from_seq": 6}),
        ("events", {**filters, "to_time": None}),
    ]:
        with pytest.raises(ReadError) as raised:
            decode_cursor(token, route, other)
        assert raised.value.status == 422
    for garbage in [
        "",
        "!!!",
        token[:-2],
        token + "AAAA",
        "x" * (reads.cursor_length_max + 1),
        encode_cursor("events", filters, 1)[::-1],
    ]:
        with pytest.raises(ReadError):
            decode_cursor(garbage, "events", filters)
