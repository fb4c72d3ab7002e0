"""Finding accounts by id prefix (``GET /v1/accounts?prefix=…``), for people at a console.

Job: answer "which accounts start with ``cust-12``" in pages, without a scan of every account on
each request (a node holds millions, and reads run on the event loop thread that also applies).

Method: a sorted list of account ids, searched by bisection. Accounts are never removed from the
state machine (a deleted one stays, state ``DELETED``) and a dict keeps insertion order, so the
ids created since the last search are the newest keys of the dict: each search adds just those
(``insort``, or one re-sort when many arrived). A new state machine (recovery from a snapshot)
is a new dict, and the index starts again from it.
"""

import bisect
import itertools
import re
from collections.abc import Mapping
from typing import Any

account_id_pattern = re.compile(r"[A-Za-z0-9._:-]{0,128}")
search_limit_default = 50
search_limit_max = 1000  # one page of account views stays well under a megabyte
resort_share = 0.1  # when more than this share of the ids is new, re-sorting beats inserting one by one


class AccountIndex:
    """Sorted account ids of one state machine's ``accounts`` dict, brought up to date on use."""

    def __init__(self) -> None:
        self._accounts: Mapping[str, Any] | None = None
        self._ids: list[str] = []

    def _refresh(self, accounts: Mapping[str, Any]) -> None:
        if accounts is not self._accounts:
            self._accounts = accounts
            self._ids = sorted(accounts)
            return
        added = len(accounts) - len(self._ids)
        assert added >= 0, "accounts are never removed from the state machine"
        if added == 0:
            return
        newest = list(itertools.islice(reversed(accounts.keys()), added))
        if added > resort_share * len(self._ids):
            self._ids.extend(newest)
            self._ids.sort()
        else:
            for account_id in newest:
                bisect.insort(self._ids, account_id)

    def search(self, accounts: Mapping[str, Any], prefix: str, limit: int, after: str | None = None) -> tuple[list[str], bool]:
        """Up to ``limit`` ids that start with ``prefix`` (and sort after ``after``), and whether more follow."""
        self._refresh(accounts)
        start = bisect.bisect_left(self._ids, prefix)
        if after is not None and after >= prefix:
            start = max(start, bisect.bisect_right(self._ids, after))
        found = []
        for account_id in self._ids[start : start + limit + 1]:
            if not account_id.startswith(prefix):
                break
            found.append(account_id)
        return found[:limit], len(found) > limit
