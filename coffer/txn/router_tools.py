"""The operator routes of :mod:`coffer.server.operator_api`, in front of a sharded node.

Job: a sharded node answers the console and the shell as a single node does. ``GET /v1/whoami``
is the router's own (it holds the keys); an account search asks every shard for its page and
merges them in id order; the chain verification and ``/metrics`` are per shard, like events and
the chain head (``shard=``); the console and the API docs pages are the same files.
"""

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coffer import console
from coffer.http.auth import Role
from coffer.http.responses import error_response, json_response
from coffer.server.operator_api import SearchError, search_params, search_path, whoami

if TYPE_CHECKING:
    from coffer.txn.router import Router


def routes(router: "Router") -> list[Route]:
    reader = Role.READER

    async def who(request: Request) -> Response:
        return json_response(whoami(router.keys, request.headers))

    async def search(request: Request, role: Role) -> Response:
        try:
            prefix, limit, after = search_params(request.query_params)
        except SearchError as error:
            return error_response(error.status, error.code, error.message)
        params = [("prefix", prefix), ("limit", str(limit))] + ([("after", after)] if after else [])
        answers = await asyncio.gather(*(router.shards.get(shard, search_path, params) for shard in range(router.shards.count)))
        merged = []
        more = False
        seqs = {}
        for shard, (status, answer) in enumerate(answers):
            if status != 200:
                return json_response(answer, status)
            merged.extend(answer["accounts"])
            more = more or answer["next"] is not None
            seqs[str(shard)] = answer["seq"]
        merged.sort(key=lambda view: view["account_id"])
        page = merged[:limit]
        # Another page follows when a shard had more, or the merge cut some off.
        following = more or len(merged) > limit
        return json_response(
            {"seq": max(seqs.values()), "seqs": seqs, "accounts": page, "next": page[-1]["account_id"] if following and page else None}
        )

    return [
        Route("/v1/whoami", who, methods=["GET"]),
        router.route(search_path, "GET", reader, search),
        router.route("/v1/audit/verify", "GET", reader, router.per_shard),
        router.route("/metrics", "GET", reader, router.per_shard),
        *console.routes(),
    ]
