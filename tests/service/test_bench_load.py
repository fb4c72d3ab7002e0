"""``coffer bench load`` against a real node: it runs, stops by itself, reports, and moves no money out of thin air.

Speed is never asserted here (targets live in the benchmark); only that the generator works.
"""

import re
from decimal import Decimal

import httpx
import pytest

from coffer.bench import load

base_line = r"mode=(single|batch) tps=(\d+) p50_ms=(\d+\.\d\d) p99_ms=(\d+\.\d\d) p999_ms=(\d+\.\d\d) errors=(\d+)"
result_line = re.compile(base_line + r" floor_tps=(\d+) ratio=(\d+\.\d\d\d)")
accounts = 20
seed = 7


def run(url: str, mode: str, hot: float) -> tuple[list[str], re.Match[str]]:
    lines: list[str] = []
    load.run(url, mode, 8, 50, 1.0, hot, accounts, 2, seed, lines.append)
    assert lines, "nothing echoed"
    match = result_line.fullmatch(lines[-1])
    assert match is not None, lines
    return lines, match


def test_single_with_a_hot_account_then_batch_keep_every_cent(server) -> None:
    lines, match = run(server.url, "single", 0.5)
    assert match[1] == "single" and int(match[2]) > 0 and match[6] == "0", lines
    assert float(match[3]) <= float(match[4]) <= float(match[5])
    assert int(match[7]) > 0 and float(match[8]) == pytest.approx(int(match[2]) / int(match[7]), abs=0.001)
    assert any(line.startswith("setup:") for line in lines)
    assert any(line.startswith("floor: tps=") and "errors=0" in line for line in lines), lines

    # The same seed again: setup answers from the dedup store, nothing is funded twice.
    lines, match = run(server.url, "batch", 0.0)
    assert match[1] == "batch" and int(match[2]) > 0 and match[6] == "0", lines
    assert int(match[7]) > 0, lines  # the floor's 50 results of 200 per request count as 50 transfers

    ids = [f"{load.account_prefix}{number}" for number in range(accounts)] + [load.hot_account]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        views = client.get("/v1/accounts", params={"ids": ",".join(ids)}).json()["accounts"]
    assert set(views) == set(ids)
    total = sum(Decimal(view["available"]) for view in views.values())
    assert total == accounts * Decimal(load.opening_balance) + Decimal(load.hot_opening_balance)
    assert views[load.hot_account]["version"] > 2  # created, funded, then moved by hot transfers


@pytest.mark.parametrize(
    ("mode", "concurrency", "batch", "hot", "account_count"),
    [
        ("burst", 8, 10, 0.0, 10),
        ("single", 0, 10, 0.0, 10),
        ("batch", 8, 9000, 0.0, 10),
        ("single", 8, 10, 1.5, 10),
        ("single", 8, 10, 0.0, 1),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    mode: str, concurrency: int, batch: int, hot: float, account_count: int
) -> None:
    with pytest.raises(load.BenchError):
        load.run("http://127.0.0.1:9", mode, concurrency, batch, 1.0, hot, account_count, 1, 1, print)


def test_open_loop_at_a_fixed_rate_reports_refusals_and_accepted_latency(server) -> None:
    lines: list[str] = []
    load.run(server.url, "single", 4, 50, 1.0, 0.0, accounts, 1, seed, lines.append, rate=200.0, floor=False)
    match = re.fullmatch(
        base_line + r" rate=200 refused=(\d+) accepted_p50_ms=(\d+\.\d\d) accepted_p99_ms=(\d+\.\d\d) late=(\d+)", lines[-1]
    )
    assert match is not None, lines
    assert match[1] == "single" and match[6] == "0" and match[7] == "0", lines
    assert any("open loop at 200 requests/s" in line for line in lines)
    with pytest.raises(load.BenchError):
        load.run(server.url, "single", 4, 50, 1.0, 0.0, accounts, 1, seed, lines.append, rate=0.0)
