"""The console's routes in front of a sharded node: search merges shards, verify and metrics per shard."""

from collections.abc import Iterator

import httpx
import pytest

from coffer.client import Client
from tests.txn.sharded_process import ShardedServer, running


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedServer]:
    yield from running(tmp_path_factory, "sharded-console", 2)


def test_search_merges_every_shard_in_id_order(sharded: ShardedServer) -> None:
    ids = sharded.ids_on(0, 3, "merge") + sharded.ids_on(1, 3, "merge")
    with Client(sharded.url) as client:
        for account_id in ids:
            client.create_account(account_id, "USD")
    found: list[str] = []
    after = None
    while True:
        params = {"prefix": "merge-", "limit": "4"} | ({"after": after} if after else {})
        page = httpx.get(sharded.url + "/v1/search/accounts", params=params, timeout=30).json()
        found += [view["account_id"] for view in page["accounts"]]
        assert set(page["seqs"]) == {"0", "1"}
        after = page["next"]
        if after is None:
            break
    assert found == sorted(ids)


def test_verify_and_metrics_are_per_shard(sharded: ShardedServer) -> None:
    for shard in (0, 1):
        verdict = httpx.get(sharded.url + "/v1/audit/verify", params={"shard": shard}, timeout=30).json()
        assert verdict["ok"], verdict
        assert "coffer_seq " in httpx.get(sharded.url + "/metrics", params={"shard": shard}).text
    assert httpx.get(sharded.url + "/v1/audit/verify").status_code == 422  # which shard?
    assert httpx.get(sharded.url + "/v1/whoami").json() == {"role": "admin", "key_id": None, "keys_required": False}
    assert httpx.get(sharded.url + "/console").status_code == 200
