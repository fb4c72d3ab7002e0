"""The client's and the CLI's history reads against a real node: twins, pages, statements, times."""

import asyncio
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from click.testing import CliRunner

from coffer.cli import main
from coffer.client import AsyncClient, Client, InvalidRequestError, Leg, NotFoundError, Statement
from tests.service.server_process import CofferServer

history_methods = (
    "get_account",
    "get_accounts",
    "history",
    "history_page",
    "iter_history",
    "events",
    "events_page",
    "iter_events",
    "statement",
)


def test_the_history_methods_are_twins() -> None:
    for name in history_methods:
        sync, async_ = getattr(Client, name), getattr(AsyncClient, name)
        assert sync.__doc__ and sync.__doc__ == async_.__doc__, name
        sync_signature, async_signature = inspect.signature(sync), inspect.signature(async_)
        assert list(sync_signature.parameters.values()) == list(async_signature.parameters.values()), name
        if name.startswith("iter_"):
            assert inspect.isgeneratorfunction(sync) and inspect.isasyncgenfunction(async_)
            assert sync_signature.return_annotation.__origin__ is Iterator
            assert async_signature.return_annotation.__origin__ is AsyncIterator
        else:
            assert inspect.iscoroutinefunction(async_) and sync_signature.return_annotation == async_signature.return_annotation


@pytest.fixture
def story(server: CofferServer) -> dict[str, object]:
    alice, bob = f"alice-{uuid.uuid4().hex[:10]}", f"bob-{uuid.uuid4().hex[:10]}"
    with Client(server.url) as api:
        created = api.create_account(alice, "USD")
        api.create_account(bob, "USD")
        api.batch_operation([Leg(account_id=alice, amount="50", asset="USD")])
        for _ in range(4):
            api.transfer(alice, bob, "1.25", asset="USD")
        versions = api.history(alice)
    return {"url": server.url, "alice": alice, "bob": bob, "created_seq": created.seq, "versions": versions}


def test_the_client_pages_and_states(story: dict[str, object]) -> None:
    alice, url = str(story["alice"]), str(story["url"])
    with Client(url) as api:
        versions = api.history(alice)
        assert [version.available for version in versions] == ["0.00", "50.00", "48.75", "47.50", "46.25", "45.00"]
        assert list(api.iter_history(alice, limit=2)) == versions
        page = api.history_page(alice, limit=4)
        assert page.versions == versions[:4] and page.next is not None
        assert api.history_page(alice, limit=4, cursor=page.next).versions == versions[4:]
        with pytest.raises(InvalidRequestError):
            api.history_page(str(story["bob"]), cursor=page.next)
        events = api.events(from_seq=int(story["created_seq"]), limit=3)
        assert len(events) == 3
        assert list(api.iter_events(from_seq=int(story["created_seq"]), to_seq=versions[-1].seq + 1, limit=2))[:3] == events
        statement = api.statement(alice, from_seq=versions[2].seq, limit=2)
        assert isinstance(statement, Statement) and statement.opening is not None and statement.opening.available == "50.00"
        assert [change.available_delta for change in statement.changes] == ["-1.25", "-1.25"] and statement.next
        rest = api.statement(alice, from_seq=versions[2].seq, limit=2, cursor=statement.next)
        assert [change.available for change in rest.changes] == ["46.25", "45.00"] and rest.next is None
        assert rest.closing is not None and rest.closing.available == "45.00"
        # As of the time of the deposit: 50.00 (or later, if later events share its millisecond).
        at_deposit = api.get_account(alice, at_time=versions[1].time)
        assert at_deposit.version >= 2 and at_deposit.seq >= versions[1].seq
        assert api.get_account(alice, at_seq=versions[1].seq).available == "50.00"
        with pytest.raises(NotFoundError):
            api.get_account(alice, at_time=0)
        batch = api.get_accounts([alice, "nobody"], at_time=versions[-1].time)
        assert batch.accounts[alice].available == "45.00" and batch.missing == ["nobody"]


def test_the_async_client_gives_the_same(story: dict[str, object]) -> None:
    alice, url = str(story["alice"]), str(story["url"])
    with Client(url) as api:
        expected = (api.history(alice), api.statement(alice), api.get_account(alice, at_time=api.history(alice)[2].time))

    async def read() -> tuple[object, ...]:
        async with AsyncClient(url) as api:
            versions = [version async for version in api.iter_history(alice, limit=2)]
            events = [event async for event in api.iter_events(from_seq=versions[0].seq, to_seq=versions[-1].seq + 1, limit=2)]
            assert [event.seq for event in events if any(account.account_id == alice for account in event.accounts)] == [
                version.seq for version in versions
            ]
            page = await api.events_page(from_seq=versions[0].seq, limit=1)
            assert page.next and (await api.history_page(alice, limit=10)).versions == versions
            return versions, await api.statement(alice), await api.get_account(alice, at_time=versions[2].time)

    assert asyncio.run(read()) == expected


def test_the_cli_reads_the_past(story: dict[str, object]) -> None:
    alice, url = str(story["alice"]), str(story["url"])
    versions = story["versions"]
    assert isinstance(versions, list)
    runner = CliRunner()

    def run(*arguments: str) -> tuple[int, str, str]:
        done = runner.invoke(main, [*arguments, "--url", url])
        return done.exit_code, done.stdout, done.stderr

    code, out, err = run("history", alice, "--limit", "2")
    assert code == 0 and len(out.strip().splitlines()) == 3 and "more: --cursor " in err
    cursor = err.split("--cursor ", 1)[1].split()[0]
    code, out, _ = run("history", alice, "--limit", "2", "--cursor", cursor, "--json")
    assert code == 0 and [version["seq"] for version in json.loads(out)] == [version.seq for version in versions[2:4]]
    code, out, err = run("history", alice, "--limit", "2", "--all", "--json")
    assert code == 0 and len(json.loads(out)) == 6 and err == ""
    code, out, err = run("history", alice, "--cursor", "garbage")
    assert code == 2 and "INVALID_REQUEST" in err
    code, out, _ = run("statement", alice, "--from-seq", str(versions[2].seq), "--limit", "1", "--json")
    whole = json.loads(out)
    assert code == 0 and whole["opening"]["available"] == "50.00" and whole["closing"]["available"] == "45.00"
    assert [change["available_delta"] for change in whole["changes"]] == ["-1.25"] * 4 and whole["next"] is None
    code, out, _ = run("statement", alice, "--from", versions[1].time, "--to", "4102444800")
    assert code == 0 and "opening available  0.00" in out and "closing available  45.00" in out
    assert out.count(" transferred ") == 4
    code, out, _ = run("account", "show", alice, "--at-time", versions[1].time, "--json")
    assert code == 0 and json.loads(out)["version"] >= 2
    code, _, err = run("account", "show", alice, "--at-time", "0")
    assert code == 3 and "ACCOUNT_NOT_FOUND" in err
    code, _, err = run("account", "show", alice, "--at-time", "0", "--at-seq", "1")
    assert code == 2
