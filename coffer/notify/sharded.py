"""Webhooks on a sharded node: the router follows every shard's history over loopback HTTP.

Each shard has its own seq and chain, so a subscription keeps a cursor per shard and each shard's
events reach the receiver in that shard's seq order (shards are independent of each other). The
events come from the shards' ``GET /v1/events`` (their event stores, never their write paths); the
subscriptions, cursors and delivery log live in the router's data directory.
"""

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from coffer.core.amounts import parse_amount
from coffer.notify.matcher import Item

if TYPE_CHECKING:
    from coffer.txn.router import Router


def _item(view: dict[str, Any]) -> Item:
    available = {account["account_id"]: parse_amount(account["available"], account["scale"], signed=True) for account in view["accounts"]}
    return Item(view["seq"], view["type"], available, view)


class RouterSource:
    def __init__(self, router: "Router") -> None:
        self.router = router
        self.shards = list(range(router.shards.count))

    async def read(self, shard: int, from_seq: int, limit: int) -> list[Item]:
        status, answer = await self.router.shards.get(shard, "/v1/events", [("from_seq", str(from_seq)), ("limit", str(limit))])
        if status != 200:
            raise RuntimeError(f"shard {shard} answered {status} to a read of its events")
        return [_item(view) for view in answer["events"]]

    async def available_at(self, shard: int, account_id: str, seq: int) -> int | None:
        status, view = await self.router.shards.get(shard, f"/v1/accounts/{quote(account_id, safe='')}", [("at_seq", str(seq))])
        return parse_amount(view["available"], view["scale"], signed=True) if status == 200 else None


class RouterHost:
    def __init__(self, router: "Router", data_dir: Path) -> None:
        self.router = router
        self.data_dir = data_dir
        self.source = RouterSource(router)

    async def heads(self) -> dict[int, int]:
        answers = await asyncio.gather(*(self.router.shards.get(shard, "/v1/audit/head") for shard in self.source.shards))
        return {shard: answer["seq"] for shard, (_, answer) in zip(self.source.shards, answers, strict=True)}

    async def account(self, account_id: str) -> tuple[int, int, int, int] | None:
        shard = self.router.shard_map.shard_of(account_id)
        status, view = await self.router.shards.get(shard, f"/v1/accounts/{quote(account_id, safe='')}")
        if status != 200:
            return None
        return shard, view["scale"], parse_amount(view["available"], view["scale"], signed=True), view["seq"]
