"""Admission control on a real ``coffer serve``: a burst far above its write queue gets 503s, and
every accepted write is in the history, once; every refused one is not, and goes through on retry.

The node runs with a write queue of ``queue_max`` requests (``--write-requests-waiting-max``); a
burst of ``burst`` transfers, each on its own connection, all written before any answer is read,
is far above it. No timing is asserted: the figures of latency under overload come from
``coffer bench load --rate``.
"""

import asyncio
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.service.server_process import CofferServer

queue_max = 8
burst = 400
accounts = 10


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CofferServer]:
    server = CofferServer(Path(tmp_path_factory.mktemp("admission")) / "data", arguments=["--write-requests-waiting-max", str(queue_max)])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _send_all(port: int, bodies: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """Open a connection per body, write every request, then read every answer."""
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in bodies]
    for (_, writer), body in zip(streams, bodies, strict=True):
        writer.write(
            b"POST /v1/transfers HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
    answers = []
    for reader, writer in streams:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        content = await reader.readexactly(int(headers["content-length"]))
        answers.append((int(lines[0].split()[1]), headers, content))
        writer.close()
    return answers


def test_a_burst_above_the_write_queue_gets_503_and_loses_nothing(node: CofferServer) -> None:
    prefix = f"adm-{uuid.uuid4().hex[:6]}"
    ids = [f"{prefix}-{number}" for number in range(accounts)]
    with httpx.Client(base_url=node.url, timeout=30.0) as client:
        commands = [{"type": "create_account", "account_id": account_id, "asset": "USD", "dedup_id": f"c-{account_id}"} for account_id in ids]
        commands.append({"type": "batch_operation", "dedup_id": f"f-{prefix}", "legs": [{"account_id": a, "amount": "1000", "asset": "USD"} for a in ids]})
        assert all(result["status"] == 200 for result in client.post("/v1/commands", json={"commands": commands}).json()["results"])
        first_seq = client.get("/v1/audit/head").json()["seq"] + 1

        transfers = [
            {"dedup_id": f"{prefix}-t{number}", "from_account_id": ids[number % accounts], "to_account_id": ids[(number + 1) % accounts], "amount": "0.01", "asset": "USD"}
            for number in range(burst)
        ]
        answers = asyncio.run(_send_all(node.port, [json.dumps(transfer).encode() for transfer in transfers]))
        statuses = [status for status, _, _ in answers]
        refused = [transfer for transfer, (status, _, _) in zip(transfers, answers, strict=True) if status == 503]
        accepted = [transfer for transfer, (status, _, _) in zip(transfers, answers, strict=True) if status == 200]
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert refused, "no 503 for a burst of {burst} over a queue of {queue_max}"
        for status, headers, content in answers:
            if status == 503:
                assert headers.get("retry-after") == "1" and json.loads(content)["error"]["code"] == "NOT_AVAILABLE"

        # Every accepted transfer is in the history exactly once; no refused one is.
        events = client.get("/v1/events", params={"from_seq": first_seq, "limit": 10_000}).json()["events"]
        logged = [event["dedup_id"] for event in events]
        assert sorted(logged) == sorted(transfer["dedup_id"] for transfer in accepted)

        # Refused ones were never applied: retried with the same dedup_ids, each applies once.
        for transfer in refused:
            retried = client.post("/v1/transfers", json=transfer)
            assert retried.status_code == 200, retried.text
        views = client.get("/v1/accounts", params={"ids": ",".join(ids)}).json()["accounts"]
        assert sum(Decimal(view["available"]) for view in views.values()) == accounts * Decimal(1000)
        moved_out = {account_id: Decimal(0) for account_id in ids}
        for transfer in transfers:
            moved_out[transfer["from_account_id"]] += Decimal("0.01")
            moved_out[transfer["to_account_id"]] -= Decimal("0.01")
        for account_id in ids:
            assert Decimal(views[account_id]["available"]) == Decimal(1000) - moved_out[account_id]
        metrics = client.get("/metrics").text
        assert any(line.startswith("coffer_writes_refused ") and float(line.split()[1]) >= len(refused) for line in metrics.splitlines())
