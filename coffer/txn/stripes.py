"""Striped accounts: a hot account's credits spread over several shards, read as one balance.

Why. A shard applies its commands in one log, so one account takes no more transfers than its
shard applies, whatever the number of shards. A merchant receiving a tenth of all transfers would
pin its shard. A *striped* account takes credits on K accounts, its *stripes*, placed on different
shards: a transfer to it becomes a transfer to the stripe on the payer's shard (one shard, no
two-phase commit), and its balance is the sum of its stripes.

What it is, durably. A striped account ``S`` (``POST /v1/accounts`` with ``"stripes": K``) is:

* ``K`` stripe accounts ``st:<d>:<n>``, ``d`` the first 24 hex digits of SHA-256(``S``), ``n`` a
  number. Numbers are tried from 0 up; a candidate is kept while its shard holds less than its
  equal share (:func:`place`), so K stripes on at least K shards land on K different shards, and
  more leave no shard without one. Clients can never name an ``st:`` account in a command
  (``core.reserved_account_id_prefixes``): only this module credits and sweeps stripes.
* ``S`` itself, an ordinary account on its own shard, the *record*: its metadata key
  :data:`definition_key` holds ``K:n0,n1,…`` (continued under ``.1``, ``.2``, … when longer than
  one metadata value), from which the stripe ids follow (never from the map again, so a later map
  cannot lose them). Its limits are 0 and 0, so no money can ever rest on it, whatever path a
  command takes. The record is written last, with the client's ``dedup_id``: it is what makes ``S`` exist,
  and its answer (a replay on a retry) is the creation's answer. The stripes' creations take ids
  derived from the client's (``st:c:<SHA-256>:<n>``), so a retry replays them too.

Every router reads the record the first time a command names ``S`` and keeps what it read:
neither a definition nor "an ordinary account" ever changes (an id is never reused, a deleted
account keeps it); an id that is not found is not kept. The map store and the routers hold
nothing more, so striping needs no new shared state.

Commands. A transfer to ``S`` goes to the stripe on the source account's shard when there is one,
else to the stripe that the ``dedup_id``'s hash picks: the choice depends only on the request, so
a retry reaches the same stripe and its dedup store. A batch operation's credit to ``S`` is placed
the same way (on the shard of the batch's first other account). Everything that would take money
from ``S``, hold it, or read one balance of it inside a command — a debit, a reservation, a TCC leg,
a precondition, an expected balance, limits, velocity caps, lock, unlock, delete — is refused with
``422 STRIPED_ACCOUNT``. Money leaves by a *sweep* (``POST /v1/accounts/{id}/sweep``): one
cross-shard transaction (:mod:`coffer.txn.coordinator`) moving every stripe's available to an
ordinary account. Its amounts are read when it starts, so a retry does not read them again: it
finds the transaction at its commit point and replays it with the legs the participants hold (an
attempt still in flight answers 503; the recovery task settles it within seconds).

Reads. ``GET /v1/accounts/{S}`` and ``GET /v1/accounts?ids=`` answer the record's view with the
stripes' sums (``available``, ``reservations``, ``pending_*``), ``upper_limit`` null, and a
``stripes`` list (id, shard, available).
"""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from coffer.core import commands as core
from coffer.core.errors import ErrorCode
from coffer.http.auth import Role
from coffer.http.responses import json_response, read_body
from coffer.server import requests as bodies
from coffer.txn import coordinator
from coffer.txn.coordinator import Coordinator, Plan
from coffer.txn.shard_map import ShardMap
from coffer.txn.shards import ShardClients, ShardUnavailable

definition_key = "coffer.stripes"  # the record's metadata key: "K:n0,n1,…", continued under definition_key.1, .2, …
stripe_of_key = "coffer.stripe_of"  # a stripe's metadata: the striped account it belongs to
digest_length = 24  # hex digits of SHA-256 in a stripe's id: 96 bits, no two accounts share stripes
directory_entries_max = 100_000  # accounts a router remembers (definitions never change; re-read when dropped)

# Commands that name accounts and take nothing from them when they credit a striped account.
_credit_kinds = frozenset({"transfer", "batch_operation"})


class StripeRefused(Exception):
    """A command a striped account does not take, or a malformed one: an answer, not a bug."""

    def __init__(self, status: int, code: ErrorCode, message: str, account_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.account_id = account_id

    def answer(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.account_id is not None:
            error["account_id"] = self.account_id
        return {"error": error}


def _striped_refusal(account_id: str, what: str) -> StripeRefused:
    return StripeRefused(
        422, ErrorCode.STRIPED_ACCOUNT, f"account {account_id} is striped (credit-only): {what}; sweep moves its money out", account_id
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stripe_id(account_id: str, number: int) -> str:
    return f"{core.stripe_id_prefix}{_digest(account_id)[:digest_length]}:{number}"


def place(account_id: str, count: int, shard_map: ShardMap) -> tuple[int, ...]:
    """The numbers of ``count`` stripes of ``account_id``, spread over the map's shards.

    Every shard gets ``count // shards`` stripes and ``count % shards`` shards one more: a
    candidate is kept while its shard is below that share. Fewer stripes than shards land on as
    many different shards; at least as many leave no shard without one.
    """
    assert 2 <= count <= core.stripes_max, count
    share, extra = divmod(count, shard_map.shards)
    held: dict[int, int] = {}
    above_share = 0  # shards holding share + 1
    numbers: list[int] = []
    number = 0
    while len(numbers) < count:
        shard = shard_map.shard_of(stripe_id(account_id, number))
        already = held.get(shard, 0)
        if already < share or (already == share and above_share < extra):
            above_share += already == share
            held[shard] = already + 1
            numbers.append(number)
        number += 1
    return tuple(numbers)


@dataclass(frozen=True)
class Striped:
    """A striped account's definition, as its record keeps it."""

    account_id: str
    asset: str
    numbers: tuple[int, ...]

    @property
    def stripe_ids(self) -> list[str]:
        return [stripe_id(self.account_id, number) for number in self.numbers]

    def metadata(self) -> dict[str, str]:
        """The definition as the record's metadata: cut into values a metadata value can hold."""
        text = f"{len(self.numbers)}:{','.join(str(number) for number in self.numbers)}"
        size = core.metadata_value_length_max
        chunks = [text[start : start + size] for start in range(0, len(text), size)]
        return {_chunk_key(index): chunk for index, chunk in enumerate(chunks)}

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> "Striped | None":
        """The definition a record's view holds, or None for an ordinary account."""
        metadata = view.get("metadata", {})
        if definition_key not in metadata:
            return None
        chunks = []
        index = 0
        while _chunk_key(index) in metadata:
            chunks.append(metadata[_chunk_key(index)])
            index += 1
        count, _, numbers = "".join(chunks).partition(":")
        parsed = tuple(int(number) for number in numbers.split(","))
        assert len(parsed) == int(count), (view["account_id"], count)
        return cls(view["account_id"], view["asset"], parsed)


def _chunk_key(index: int) -> str:
    return definition_key if index == 0 else f"{definition_key}.{index}"


def is_definition_key(key: str) -> bool:
    return key in (definition_key, stripe_of_key) or key.startswith(f"{definition_key}.")


def stripe_for(striped: Striped, shard_map: ShardMap, near: int | None, dedup_id: str) -> str:
    """The stripe a credit goes to: the (first) one on shard ``near`` if any, else one the dedup_id picks."""
    stripes = striped.stripe_ids
    for candidate in stripes:
        if shard_map.shard_of(candidate) == near:
            return candidate
    return stripes[int(_digest(dedup_id)[:8], 16) % len(stripes)]


def account_ids_of(kind: str, body: dict[str, Any]) -> list[str]:
    """The account ids a command's body names (what is not a string is left to the shard's 422)."""
    named: list[Any] = []
    if kind == "transfer":
        named = [body.get("from_account_id"), body.get("to_account_id")]
    elif kind in ("batch_operation", "tcc_try"):
        for group in ("legs", "preconditions"):
            items = body.get(group)
            if isinstance(items, list):
                named.extend(item.get("account_id") for item in items if isinstance(item, dict))
    else:
        named = [body.get("account_id")]
    return [account_id for account_id in named if isinstance(account_id, str)]


class Stripes:
    """A router's view of striped accounts: what it has read of them, and the commands on them."""

    def __init__(self, shards: ShardClients, shard_map: ShardMap, coordinator_: Coordinator) -> None:
        self.shards = shards
        self.shard_map = shard_map
        self.coordinator = coordinator_
        self._known: dict[str, Striped | None] = {}  # None: an ordinary account, for good

    # ------------------------------------------------------------------ the directory

    async def lookup(self, account_ids: Iterable[str]) -> dict[str, Striped]:
        """The striped accounts among ``account_ids`` (records read once, then remembered)."""
        unknown = sorted({account_id for account_id in account_ids if account_id not in self._known})
        groups: dict[int, list[str]] = {}
        for account_id in unknown:
            if not account_id.startswith(core.reserved_account_id_prefixes):
                groups.setdefault(self.shard_map.shard_of(account_id), []).append(account_id)
        answers = await asyncio.gather(*(self.shards.get(shard, "/v1/accounts", {"ids": ",".join(ids)}) for shard, ids in groups.items()))
        if len(self._known) + len(unknown) > directory_entries_max:
            self._known.clear()
        for (shard, _), (status, answer) in zip(groups.items(), answers, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"reading accounts answered {status}: {answer}")
            for account_id, view in answer["accounts"].items():
                self._known[account_id] = Striped.from_view(view)
        found: dict[str, Striped] = {}
        for account_id in account_ids:
            striped = self._known.get(account_id)
            if striped is not None:
                found[account_id] = striped
        return found

    async def striped_in(self, items: list[Any]) -> dict[str, Striped]:
        """The striped accounts named by any of ``/v1/commands``'s items."""
        named: set[str] = set()
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                named.update(account_ids_of(item["type"], item))
        return await self.lookup(named)

    @staticmethod
    def needs_router(kind: str, body: dict[str, Any], striped: dict[str, Striped]) -> bool:
        """Whether a ``/v1/commands`` item must go through :meth:`prepare` rather than straight to a shard."""
        if kind == "create_account" and body.get("stripes") is not None:
            return True
        return any(account_id in striped or account_id.startswith(core.reserved_account_id_prefixes) for account_id in account_ids_of(kind, body))

    # ------------------------------------------------------------------ commands

    async def prepare(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as it goes to the shards: a credit to a striped account aimed at one stripe.

        Raises :class:`StripeRefused` for a stripe's id or what a striped account does not take.
        """
        named = account_ids_of(kind, body)
        for account_id in named:
            refusal = core.reserved_account_id_refusal(account_id)
            if refusal is not None:
                raise StripeRefused(422, ErrorCode.INVALID_REQUEST, refusal, account_id)
        if kind == "create_account":
            return body  # the record answers ACCOUNT_EXISTS for a striped id
        striped = await self.lookup(named)
        if not striped:
            return body
        if kind not in _credit_kinds:
            account_id = next(account_id for account_id in named if account_id in striped)
            raise _striped_refusal(account_id, f"{kind} is refused")
        dedup_id = body.get("dedup_id")
        if not isinstance(dedup_id, str):
            return body  # malformed: the shard answers its precise 422
        if kind == "transfer":
            return self._transfer(body, striped, dedup_id)
        return self._batch(body, striped, dedup_id)

    def _transfer(self, body: dict[str, Any], striped: dict[str, Striped], dedup_id: str) -> dict[str, Any]:
        source, target = body["from_account_id"], body["to_account_id"]
        if source in striped:
            raise _striped_refusal(source, "a transfer from it is refused")
        if body.get("expected_to_balance") is not None:
            raise _striped_refusal(target, "its balance is spread over shards, so expected_to_balance is refused")
        return {**body, "to_account_id": stripe_for(striped[target], self.shard_map, self.shard_map.shard_of(source), dedup_id)}

    def _batch(self, body: dict[str, Any], striped: dict[str, Striped], dedup_id: str) -> dict[str, Any]:
        legs = body.get("legs")
        for condition in body.get("preconditions") or []:
            if isinstance(condition, dict) and condition.get("account_id") in striped:
                raise _striped_refusal(condition["account_id"], "its balance is spread over shards, so a precondition on it is refused")
        if not isinstance(legs, list):
            return body
        others = [leg["account_id"] for leg in legs if isinstance(leg, dict) and isinstance(leg.get("account_id"), str)]
        near = next((self.shard_map.shard_of(account_id) for account_id in others if account_id not in striped), None)
        rewritten = []
        for leg in legs:
            account_id = leg.get("account_id") if isinstance(leg, dict) else None
            if account_id in striped:
                amount = leg.get("amount")
                if not isinstance(amount, str) or amount.startswith("-"):
                    raise _striped_refusal(account_id, "a batch leg taking money from it is refused")
                leg = {**leg, "account_id": stripe_for(striped[account_id], self.shard_map, near, dedup_id)}
            rewritten.append(leg)
        return {**body, "legs": rewritten}


    async def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Create a striped account: its stripes, then its record (the client's dedup_id)."""
        try:
            request = bodies.convert_body(bodies.CreateAccountBody, body)
        except bodies.RequestError as error:
            return 422, StripeRefused(422, error.code, error.message, error.account_id).answer()
        assert isinstance(request, bodies.CreateAccountBody) and request.stripes is not None
        account_id = request.account_id
        if request.lower_limit is not None or request.upper_limit is not None:
            return 422, _striped_refusal(account_id, "it takes no limits (it is never debited, and its credits spread over shards)").answer()
        metadata = dict(request.metadata or {})
        if any(is_definition_key(key) for key in metadata):
            message = f"metadata keys {definition_key!r}, {definition_key + '.N'!r} and {stripe_of_key!r} are kept for striped accounts' own use"
            return 422, StripeRefused(422, ErrorCode.INVALID_REQUEST, message, account_id).answer()
        striped = Striped(account_id, request.asset, place(account_id, request.stripes, self.shard_map))
        definition = striped.metadata()
        if len(metadata) + len(definition) > core.metadata_keys_max:
            room = core.metadata_keys_max - len(definition)
            message = f"a striped account of {request.stripes} stripes keeps {len(definition)} metadata keys of its own: give at most {room}"
            return 422, StripeRefused(422, ErrorCode.INVALID_REQUEST, message, account_id).answer()
        home = self.shard_map.shard_of(account_id)
        status, _ = await self.shards.get(home, f"/v1/accounts/{account_id}")
        if status == 404:
            refused = await self._create_stripes(striped, request)
            if refused is not None:
                return refused
        # Written last, it makes the account exist; on a retry its dedup store answers as the first time.
        record = {
            "dedup_id": request.dedup_id,
            "account_id": account_id,
            "asset": request.asset,
            "scale": request.scale,
            "lower_limit": "0",
            "upper_limit": "0",
            "metadata": {**metadata, **definition},
        }
        status, answer = await self.shards.post(home, "/v1/accounts", record)
        if status == 200:
            answer["stripes"] = self._stripe_list(striped)
        return status, answer

    async def _create_stripes(self, striped: Striped, request: bodies.CreateAccountBody) -> tuple[int, dict[str, Any]] | None:
        """Create every stripe (or find it made by an earlier attempt); an answer if one cannot be."""
        prefix = f"{core.stripe_id_prefix}c:{_digest(request.dedup_id)[:40]}"

        async def one(number: int) -> tuple[int, dict[str, Any]]:
            stripe = stripe_id(striped.account_id, number)
            body = {
                "dedup_id": f"{prefix}:{number}",
                "account_id": stripe,
                "asset": request.asset,
                "scale": request.scale,
                "metadata": {stripe_of_key: striped.account_id},
            }
            shard = self.shard_map.shard_of(stripe)
            status, answer = await self.shards.post(shard, "/v1/accounts", body)
            if status == 200 or _code(answer) != ErrorCode.ACCOUNT_EXISTS:
                return status, answer
            # Made by another attempt (another dedup_id): usable only as the same kind of money.
            status, view = await self.shards.get(shard, f"/v1/accounts/{stripe}")
            if status == 200 and (view["asset"], view["scale"]) == (request.asset, request.scale):
                return 200, view
            message = f"account {striped.account_id} was striped by another request with another asset or scale"
            return 409, StripeRefused(409, ErrorCode.ACCOUNT_EXISTS, message, striped.account_id).answer()

        answers = await asyncio.gather(*(one(number) for number in striped.numbers))
        for status, answer in answers:
            if status != 200:
                return status, answer
        return None

    def _stripe_list(self, striped: Striped, views: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        listed = []
        for stripe in striped.stripe_ids:
            entry: dict[str, Any] = {"account_id": stripe, "shard": self.shard_map.shard_of(stripe)}
            if views is not None and stripe in views:
                entry["available"] = views[stripe]["available"]
            listed.append(entry)
        return listed

    # ------------------------------------------------------------------ reads

    def reading(self, handler: Callable[[Request, Role], Awaitable[Response]]) -> Callable[[Request, Role], Awaitable[Response]]:
        """``handler`` (a router's account read), with every striped account's view made whole."""

        async def read(request: Request, role: Role) -> Response:
            response = await handler(request, role)
            if response.status_code != 200 or definition_key.encode() not in response.body:
                return response  # the ordinary case costs one search in the answer's bytes
            answer = msgspec.json.decode(response.body)
            views: dict[str, Any] = answer["accounts"] if "accounts" in answer else {answer["account_id"]: answer}
            striped = {account_id: view for account_id, view in views.items() if Striped.from_view(view) is not None}
            if not striped:
                return response  # the key's name was only in some metadata value
            params = request.query_params
            if "at_seq" in params:
                message = "at_seq is per shard and a striped account spans shards (use at_time or token)"
                return json_response(StripeRefused(422, ErrorCode.INVALID_REQUEST, message).answer(), 422)
            extra = [(key, value) for key, value in params.multi_items() if key in ("at_time", "token")]
            for account_id, view in striped.items():
                views[account_id] = await self._whole(view, extra)
            return json_response(answer if "accounts" in answer else views[answer["account_id"]])

        return read

    async def _whole(self, view: dict[str, Any], params: list[tuple[str, str]]) -> dict[str, Any]:
        """A record's view with its stripes' money: one balance."""
        striped = Striped.from_view(view)
        if striped is None:
            return view
        groups: dict[int, list[str]] = {}
        for stripe in striped.stripe_ids:
            groups.setdefault(self.shard_map.shard_of(stripe), []).append(stripe)
        seqs = dict(_token(params))
        at_time = [(key, value) for key, value in params if key == "at_time"]

        async def read(shard: int, ids: list[str]) -> tuple[int, dict[str, Any]]:
            wait = [("min_seq", str(seqs[shard]))] if shard in seqs else []
            return await self.shards.get(shard, "/v1/accounts", [("ids", ",".join(ids)), *at_time, *wait])

        answers = await asyncio.gather(*(read(shard, ids) for shard, ids in groups.items()))
        views: dict[str, dict[str, Any]] = {}
        shard_seqs: dict[str, int] = {}
        for shard, (status, answer) in zip(groups, answers, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"reading the stripes of {striped.account_id} answered {status}: {answer}")
            views.update(answer["accounts"])
            shard_seqs[str(shard)] = answer["seq"]
        present = [views[stripe] for stripe in striped.stripe_ids if stripe in views]
        whole = dict(view)
        whole["available"] = _sum(part["available"] for part in present)
        for section in ("reservations", "pending_in", "pending_out"):
            merged: dict[str, Decimal] = {}
            for part in present:
                for key, amount in part.get(section, {}).items():
                    merged[key] = merged.get(key, Decimal(0)) + Decimal(amount)
            whole[section] = {key: str(amount) for key, amount in sorted(merged.items())}
        whole["upper_limit"] = None
        whole["version"] = view["version"] + sum(part["version"] for part in present)
        whole["metadata"] = {key: value for key, value in view["metadata"].items() if not is_definition_key(key)}
        whole["stripes"] = self._stripe_list(striped, views)
        whole["stripe_seqs"] = shard_seqs
        return whole

    # ------------------------------------------------------------------ sweep

    async def sweep_handler(self, request: Request, role: Role) -> Response:
        data = await read_body(request.headers, request.stream())
        try:
            status, answer = await self.sweep(request.path_params["account_id"], data)
        except StripeRefused as refused:
            status, answer = refused.status, refused.answer()
        return json_response(answer, status)

    async def sweep(self, account_id: str, data: bytes) -> tuple[int, dict[str, Any]]:
        """Move every stripe's available to an ordinary account, in one cross-shard transaction."""
        try:
            body = bodies.decode_body(bodies.SweepBody, data)
            bodies.refuse_reserved_command_ids(body.dedup_id)
        except bodies.RequestError as error:
            raise StripeRefused(422, error.code, error.message, error.account_id) from None
        assert isinstance(body, bodies.SweepBody)
        target = body.to_account_id
        for named in (account_id, target):
            refusal = core.reserved_account_id_refusal(named)
            if refusal is not None:
                raise StripeRefused(422, ErrorCode.INVALID_REQUEST, refusal, named)
        striped = await self.lookup([account_id, target])
        if target in striped:
            raise _striped_refusal(target, "a sweep moves money to an ordinary account")
        if account_id not in striped:
            if account_id not in self._known:
                raise StripeRefused(409, ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found", account_id)
            raise StripeRefused(422, ErrorCode.INVALID_REQUEST, f"account {account_id} is not striped: move its money with a transfer", account_id)
        definition = striped[account_id]
        commit_point = self.shard_map.shard_of(body.dedup_id)
        txn_id = coordinator.txn_id_of(body.dedup_id, commit_point)
        status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
        decision = view.get("decision") if status == 200 else None
        if decision is not None:
            return await self._replay(definition, target, body.dedup_id, txn_id, decision)
        participants = sorted({self.shard_map.shard_of(stripe) for stripe in definition.stripe_ids} | {self.shard_map.shard_of(target)})
        held = await asyncio.gather(*(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in participants))
        if any(status == 200 for status, _ in held):
            # An earlier attempt holds money and has not decided: it (or the recovery task, within
            # seconds) will; a retry then replays what was decided.
            raise ShardUnavailable(commit_point, f"an earlier attempt of sweep {body.dedup_id!r} is still in flight")
        legs = await self._legs(definition, target)
        if not legs:
            return await self._sweep_nothing(definition, target, body.dedup_id, txn_id)
        return await self._run(definition, body.dedup_id, txn_id, commit_point, legs)

    async def _legs(self, striped: Striped, target: str) -> list[dict[str, Any]]:
        """Every stripe's available out, their sum in: the sweep's legs as of now (none if empty)."""
        groups: dict[int, list[str]] = {}
        for stripe in striped.stripe_ids:
            groups.setdefault(self.shard_map.shard_of(stripe), []).append(stripe)
        answers = await asyncio.gather(*(self.shards.get(shard, "/v1/accounts", {"ids": ",".join(ids)}) for shard, ids in groups.items()))
        views: dict[str, dict[str, Any]] = {}
        for shard, (status, answer) in zip(groups, answers, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"reading stripes answered {status}: {answer}")
            views.update(answer["accounts"])
        legs = []
        for stripe in striped.stripe_ids:
            available = views[stripe]["available"] if stripe in views else "0"
            if Decimal(available) > 0:
                legs.append({"account_id": stripe, "amount": f"-{available}", "asset": striped.asset})
        if legs:
            legs.append({"account_id": target, "amount": _sum(leg["amount"][1:] for leg in legs), "asset": striped.asset})
        return legs

    async def _run(self, striped: Striped, dedup_id: str, txn_id: str, commit_point: int, legs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        body = {"dedup_id": dedup_id, "legs": legs}
        plan = coordinator.plan("batch_operation", body, self.shard_map)
        if plan is None:  # every stripe with money shares the target's shard: one participant
            shard = self.shard_map.shard_of(legs[0]["account_id"])
            accounts = [leg["account_id"] for leg in legs]
            plan = Plan(dedup_id, txn_id, commit_point, {shard: {"legs": legs, "preconditions": []}}, accounts, [shard])
        assert plan.txn_id == txn_id, (plan.txn_id, txn_id)
        outcome = await self.coordinator.run(plan)
        if outcome.status == 200:
            outcome.body["swept"] = legs[-1]["amount"]
            outcome.body["striped_account_id"] = striped.account_id
        return outcome.status, outcome.body

    async def _replay(
        self, striped: Striped, target: str, dedup_id: str, txn_id: str, decision: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """A sweep decided before: its answer again (a commit replays with the legs the participants hold)."""
        if not decision["commit"]:
            error: dict[str, Any] = {"code": decision.get("reason_code") or ErrorCode.TXN_ABORTED.value}
            error["message"] = decision.get("reason_message") or f"transaction {txn_id} was aborted"
            if decision.get("reason_account_id") is not None:
                error["account_id"] = decision["reason_account_id"]
            return 409, {"error": error}
        participants = decision["participants"]
        if not participants:
            return 200, _nothing_swept(striped, txn_id)
        parts = await asyncio.gather(*(self.shards.get(shard, f"/v1/transactions/{txn_id}") for shard in participants))
        moved: dict[str, dict[str, Any]] = {}
        for shard, (status, part) in zip(participants, parts, strict=True):
            if status != 200:
                raise ShardUnavailable(shard, f"reading {txn_id} answered {status}")
            moved.update({leg["account_id"]: leg for leg in part["legs"]})
        if target not in moved:
            message = f"dedup_id {dedup_id!r} was used for a sweep to another account"
            return 409, {"error": {"code": ErrorCode.DEDUP_ID_REUSED.value, "message": message}}
        legs = [
            {"account_id": stripe, "amount": f"-{moved[stripe]['amount_out']}", "asset": striped.asset}
            for stripe in striped.stripe_ids
            if stripe in moved
        ]
        legs.append({"account_id": target, "amount": moved[target]["amount_in"], "asset": striped.asset})
        return await self._run(striped, dedup_id, txn_id, coordinator.commit_point_of(txn_id), legs)

    async def _sweep_nothing(self, striped: Striped, target: str, dedup_id: str, txn_id: str) -> tuple[int, dict[str, Any]]:
        """Empty stripes: record that this sweep moved nothing, so a retry answers the same."""
        commit_point = coordinator.commit_point_of(txn_id)
        decision = {"type": "decide", "dedup_id": f"{txn_id}.decide", "txn_id": txn_id, "commit": True, "participants": []}
        status, answer = await self.shards.post(commit_point, "/v1/commands", {"commands": [decision]})
        (result,) = answer["results"]
        if result["status"] != 200 and _code(result) not in (ErrorCode.TXN_ALREADY_DECIDED, ErrorCode.DEDUP_ID_REUSED):
            raise ShardUnavailable(commit_point, f"the commit point refused the decision: {result}")
        status, view = await self.shards.get(commit_point, f"/v1/transactions/{txn_id}")
        if status != 200 or view.get("decision") is None:
            raise ShardUnavailable(commit_point, f"the commit point has no decision for {txn_id}")
        if not view["decision"]["commit"] or view["decision"]["participants"]:
            return await self._replay(striped, target, dedup_id, txn_id, view["decision"])  # another attempt decided first
        return 200, _nothing_swept(striped, txn_id)


def _nothing_swept(striped: Striped, txn_id: str) -> dict[str, Any]:
    return {"seq": 0, "log_index": 0, "accounts": [], "txn_id": txn_id, "swept": "0", "striped_account_id": striped.account_id}


def _sum(amounts: Iterable[str]) -> str:
    return str(sum((Decimal(amount) for amount in amounts), Decimal(0)))


def _token(params: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """The shard:seq pairs of a ``token=`` the router has already checked."""
    pairs = []
    for key, value in params:
        if key == "token":
            for part in value.split(","):
                shard, _, seq = part.partition(":")
                pairs.append((int(shard), int(seq)))
    return pairs


def _code(answer: dict[str, Any]) -> str | None:
    error = answer.get("error") if isinstance(answer, dict) else None
    return error.get("code") if isinstance(error, dict) else None
