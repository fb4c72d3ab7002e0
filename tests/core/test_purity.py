"""The core is pure: no I/O, no clock, no randomness — time and the log index come in."""

import ast
import datetime
import os
import random
import time
import uuid
from pathlib import Path

import pytest

import coffer.core
from coffer.core.snapshot import take_snapshot
from coffer.core.state_machine import StateMachine

from .conftest import apply_entry, batch, compensate, confirm, create, leg, reserve, start_time_ms, tcc_try, transfer

core_directory = Path(coffer.core.__file__).parent
core_files = sorted(core_directory.glob("*.py"))

forbidden_modules = {
    "os",
    "time",
    "random",
    "asyncio",
    "socket",
    "threading",
    "datetime",
    "uuid",
    "subprocess",
    "sqlite3",
    "nats",
    "httpx",
    "secrets",
    # beyond the brief: other ways to reach the OS, a clock or the network
    "importlib",
    "multiprocessing",
    "concurrent",
    "selectors",
    "select",
    "signal",
    "shutil",
    "tempfile",
    "pathlib",
    "urllib",
    "http",
    "ssl",
    "logging",
    "zoneinfo",
}
forbidden_calls = {"open", "print", "input", "__import__", "eval", "exec", "breakpoint", "compile"}


def _imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def test_the_core_has_the_modules_we_scan() -> None:
    names = {path.name for path in core_files}
    assert {"amounts.py", "commands.py", "accounts.py", "events.py", "state_machine.py", "snapshot.py"} <= names


@pytest.mark.parametrize("path", core_files, ids=lambda path: path.name)
def test_core_module_imports_nothing_impure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for module, line in _imported_modules(tree):
        top = module.split(".")[0]
        assert top not in forbidden_modules, f"{path.name}:{line} imports {module}"
        if top == "coffer":
            assert module.startswith("coffer.core"), f"{path.name}:{line}: the core imports {module} (imports go one way only)"


@pytest.mark.parametrize("path", core_files, ids=lambda path: path.name)
def test_core_module_calls_no_io_builtins(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in forbidden_calls, f"{path.name}:{node.lineno} calls {node.func.id}()"


def test_the_scan_would_catch_an_impure_import() -> None:
    tree = ast.parse("import os\nfrom time import monotonic\nimport asyncio.tasks\nfrom . import sibling\n")
    tops = {module.split(".")[0] for module, _ in _imported_modules(tree)}
    assert tops == {"os", "time", "asyncio"}
    assert tops <= forbidden_modules


# Fixed dedup ids: the same entries must be fed to every machine that is compared.
_entries = [
    [create("a", dedup_id="c-a"), create("b", dedup_id="c-b")],
    [batch(leg("a", 5_000), dedup_id="fund")],
    [transfer("a", "b", 100, dedup_id="t"), reserve("a", "r", 10, dedup_id="hold")],
    [tcc_try("x", leg("a", -5), leg("b", 5), timeout_s=2, dedup_id="try-x"), tcc_try("y", leg("a", -5), dedup_id="try-y")],
    [confirm("y", dedup_id="confirm-y")],
    [compensate("t", dedup_id="undo")],
    [],  # entry 6 comes at start + 10 s, after the deadline of "x" (start + 1.5 s + 2 s)
]


def _history(machine: StateMachine) -> list:
    times = [start_time_ms + index * 500 for index in range(len(_entries) - 1)] + [start_time_ms + 10_000]
    return [apply_entry(machine, *commands, time_ms=time_ms) for time_ms, commands in zip(times, _entries, strict=True)]


def _fail(*_args, **_kwargs):
    raise AssertionError("the core read a clock or drew a random number")


class _ForbiddenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        _fail()

    @classmethod
    def utcnow(cls):
        _fail()

    @classmethod
    def today(cls):
        _fail()


def test_the_state_machine_never_reads_a_clock_or_draws_random_numbers(monkeypatch) -> None:
    reference = StateMachine()
    expected = _history(reference)
    with monkeypatch.context() as patch:
        for name in (
            "time",
            "time_ns",
            "monotonic",
            "monotonic_ns",
            "perf_counter",
            "perf_counter_ns",
            "process_time",
            "localtime",
            "gmtime",
        ):
            patch.setattr(time, name, _fail)
        for name in ("random", "randrange", "randint", "getrandbits", "choice", "shuffle"):
            patch.setattr(random, name, _fail)
        patch.setattr(os, "urandom", _fail)
        patch.setattr(uuid, "uuid4", _fail)
        patch.setattr(uuid, "uuid1", _fail)
        patch.setattr(datetime, "datetime", _ForbiddenDatetime)
        machine = StateMachine()
        outputs = _history(machine)
        snapshot = take_snapshot(machine)
    assert outputs == expected
    assert snapshot == take_snapshot(reference)
    # the expiry came from log time alone, in the entry after the deadline and in no other
    assert [[event.decode().type for event in events].count("tcc_expired") for _, events in outputs] == [0, 0, 0, 0, 0, 0, 1]


def test_the_same_entries_give_the_same_bytes_whatever_the_wall_clock(monkeypatch) -> None:
    first = StateMachine()
    _history(first)
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: 4_102_444_800.0)  # the year 2100
        patch.setattr(time, "time_ns", lambda: 4_102_444_800 * 10**9)
        patch.setattr(time, "monotonic", lambda: 10.0**9)
        second = StateMachine()
        _history(second)
    assert take_snapshot(first) == take_snapshot(second)
    assert first.head == second.head
