"""Running flows: exactly once by dedup_id, atomic or as a saga, resumable after any crash.

A run is recorded in the ledger before it moves money (``StartFlowRun``, whose ``dedup_id`` is the
run's id, with the flow's version and the normalized params) and after it ends
(``FinishFlowRun`` with the run's view as opaque bytes). In between it sends its commands through
the node's own command path (:class:`Ledger`), each under a ``dedup_id`` derived from the run's
(:func:`coffer.flows.compiler.derived_dedup_id`). So the runner keeps no state of its own:

- a retry of a finished run answers its recorded outcome; of an unfinished one (its runner
  crashed, or lost the log for a while) resumes it: every step already applied replays its
  outcome from the core's dedup store, the rest are applied once;
- the same run id with other params is ``DEDUP_ID_REUSED`` (the core compares the start record);
- a recovery task (:meth:`FlowRunner.recover`) resumes runs left unfinished longer than
  ``resume_after_s`` with no client coming back.

Atomic: one command; its rejection is the run's. Saga: the steps in order; the first rejected
step stops the run and the steps done are compensated in reverse order (the core's
``compensate`` of a transfer, batch or reservation, or the step's own command, e.g. a TCC cancel);
a compensation that is rejected stops there (``COMPENSATION_FAILED``: an operator must look). An
unknown outcome (the log or a shard did not answer) is never guessed: the run stays open and the
caller gets 503, to retry with the same dedup_id.

On a single node the start record and an atomic run's command go to the log together, in one
entry (nothing can come between them), when no record of the run exists yet.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from coffer.core.commands import id_length_max, reserved_id_refusal
from coffer.core.errors import ErrorCode
from coffer.flows import compiler, definition
from coffer.flows.compiler import CheckFailed, Compiled, ParamsInvalid
from coffer.flows.definition import Flow, FlowInvalid

logger = logging.getLogger(__name__)

flow_cache_size_max = 1024  # validated definitions kept in memory (a version never changes)
resume_after_s = 5.0  # a run unfinished this long (log time) with no runner is resumed by recovery
recovery_interval_s = 1.0
recovery_batch_max = 100  # unfinished runs resumed per round
outcome_bytes_max = 64 * 1024  # the core's bound on a finish record

SUCCEEDED, FAILED, COMPENSATED, COMPENSATION_FAILED, RUNNING = "SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED", "RUNNING"
_id_characters = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_json = msgspec.json.Encoder(order="sorted")

Answer = tuple[int, dict[str, Any]]


class FlowError(Exception):
    """A run that cannot start: (status, code, message); nothing was recorded."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Unavailable(Exception):
    """The command path did not answer: the run's outcome is unknown; it stays open."""


@dataclass(frozen=True)
class StoredVersion:
    version: int
    definition: bytes


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    flow: str
    version: int
    params: bytes
    outcome: bytes | None
    time_ms: int


class Ledger(Protocol):
    """What a runner needs from a node: its registry, its scales and its command path."""

    async def flow_version(self, name: str, version: int | None) -> StoredVersion | None: ...

    async def run_record(self, run_id: str) -> StoredRun | None: ...

    async def open_runs(self, limit: int) -> list[StoredRun]: ...

    async def scales(self, assets: list[str], accounts: list[str]) -> dict[str, int]: ...

    async def send(self, kind: str, body: dict[str, Any]) -> Answer: ...

    async def start(self, run_id: str, flow: str, version: int, params: bytes, together: tuple[str, dict[str, Any]] | None) -> tuple[Answer, Answer | None]:
        """Record the start; with ``together``, send that command in the same log entry if the
        node can (else right after). Returns the start's answer and the command's."""
        ...

    async def finish(self, run_id: str, outcome: bytes) -> Answer: ...


def _error(answer: dict[str, Any]) -> dict[str, Any]:
    error = answer.get("error")
    return error if isinstance(error, dict) else {"code": ErrorCode.INVALID_REQUEST.value, "message": str(answer)}


def _summary(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    if status == 200:
        summary: dict[str, Any] = {"status": 200, "seq": answer.get("seq")}
        for key in ("txn_id", "compensation"):
            if key in answer:
                summary[key] = answer[key]
        return summary
    return {"status": status, "error": _error(answer)}


class FlowRunner:
    """Runs flows through a :class:`Ledger`.

    ``finish_in_background``: an atomic run answers as soon as its command's outcome is known and
    writes its finish record in the background (it joins the next log entry with other requests),
    so a run costs one wait for the log, not two. Until that record lands the run reads as
    RUNNING elsewhere; here, :meth:`view` waits for it. If the node dies first, a retry or the
    recovery task finishes the run from the log (the command replays its outcome).
    """

    def __init__(self, ledger: Ledger, finish_in_background: bool = False) -> None:
        self.ledger = ledger
        self.finish_in_background = finish_in_background
        self._flows: OrderedDict[tuple[str, int], Flow] = OrderedDict()
        self._finishing: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ definitions

    def _flow(self, name: str, stored: StoredVersion) -> Flow:
        key = (name, stored.version)
        flow = self._flows.get(key)
        if flow is None:
            try:
                flow = definition.load(stored.definition)
            except FlowInvalid as error:  # registered by hand past validation: refuse to run it
                raise FlowError(422, ErrorCode.FLOW_INVALID, f"flow {name} version {stored.version}: {error}") from None
            self._flows[key] = flow
            if len(self._flows) > flow_cache_size_max:
                self._flows.popitem(last=False)
        return flow

    async def _stored(self, name: str, version: int | None) -> StoredVersion:
        stored = await self.ledger.flow_version(name, version)
        if stored is None:
            what = f"flow {name!r}" if version is None else f"flow {name!r} version {version}"
            raise FlowError(404, ErrorCode.FLOW_NOT_FOUND, f"no {what}")
        return stored

    async def _compile(self, flow: Flow, params: dict[str, Any], run_id: str) -> Compiled:
        try:
            prepared = compiler.prepare(flow, params, run_id)
            scales = await self.ledger.scales(sorted(set(prepared.assets.values())), prepared.accounts)
            return compiler.compile_run(prepared, scales)
        except ParamsInvalid as error:
            raise FlowError(422, ErrorCode.INVALID_REQUEST, str(error)) from None
        except CheckFailed as error:
            raise FlowError(422, ErrorCode.FLOW_CHECK_FAILED, str(error)) from None

    # ------------------------------------------------------------------ runs

    async def run(self, name: str, dedup_id: str, params: dict[str, Any], version: int | None = None, dry_run: bool = False) -> Answer:
        """POST /v1/flows/{name}/runs: (status, body)."""
        try:
            return await self._run(name, dedup_id, params, version, dry_run)
        except FlowError as error:
            return error.status, {"error": {"code": error.code.value, "message": error.message}}
        except Unavailable as error:
            return 503, {"error": {"code": ErrorCode.NOT_AVAILABLE.value, "message": f"{error}; retry with the same dedup_id"}}

    async def _run(self, name: str, dedup_id: str, params: dict[str, Any], version: int | None, dry_run: bool) -> Answer:
        if not isinstance(dedup_id, str) or not 0 < len(dedup_id) <= id_length_max or not set(dedup_id) <= _id_characters:
            raise FlowError(422, ErrorCode.INVALID_REQUEST, "a run's dedup_id is 1 to 128 characters of A-Za-z0-9._:-")
        refusal = reserved_id_refusal("dedup_id", dedup_id)  # a run's id is its start record's dedup_id
        if refusal is not None:
            raise FlowError(422, ErrorCode.INVALID_REQUEST, refusal)
        record = None if dry_run else await self.ledger.run_record(dedup_id)
        if record is not None:
            if record.flow != name or (version is not None and version != record.version):
                raise FlowError(409, ErrorCode.DEDUP_ID_REUSED, f"dedup_id {dedup_id!r} was used for a run of {record.flow} version {record.version}")
            flow = self._flow(name, await self._stored(name, record.version))
            compiled = await self._compile(flow, params, dedup_id)
            if _json.encode(compiled.params) != record.params:
                raise FlowError(409, ErrorCode.DEDUP_ID_REUSED, f"dedup_id {dedup_id!r} was used for a run with other params")
            if record.outcome is not None:
                return _answer(msgspec.json.decode(record.outcome))
            return await self._execute(record.run_id, name, record.version, flow, compiled, None)
        stored = await self._stored(name, version)
        flow = self._flow(name, stored)
        compiled = await self._compile(flow, params, dedup_id)
        if dry_run:
            view = self._view(dedup_id, name, stored.version, compiled, "DRY_RUN", [], [], None)
            view["dry_run"] = True
            return 200, view
        together = (compiled.steps[0].kind, compiled.steps[0].body) if flow.spec.mode == "atomic" else None
        (status, answer), first = await self.ledger.start(dedup_id, name, stored.version, _json.encode(compiled.params), together)
        if status >= 500:
            raise Unavailable(_error(answer).get("message", "the log did not answer"))
        if status != 200:
            error = _error(answer)
            return status, {"error": error}
        return await self._execute(dedup_id, name, stored.version, flow, compiled, first)

    async def resume(self, record: StoredRun) -> Answer:
        """Finish an unfinished run from its record (recovery, or a retry)."""
        stored = await self._stored(record.flow, record.version)
        flow = self._flow(record.flow, stored)
        params = msgspec.json.decode(record.params)
        try:
            compiled = await self._compile(flow, params, record.run_id)
        except FlowError as error:
            # The recorded params no longer compile (an asset's scale is gone from view): record it.
            outcome = {"run_id": record.run_id, "flow": record.flow, "version": record.version, "status": FAILED}
            outcome["error"] = {"code": error.code.value, "message": error.message}
            await self.ledger.finish(record.run_id, _json.encode(outcome))
            return error.status, outcome
        return await self._execute(record.run_id, record.flow, record.version, flow, compiled, None)

    async def _send(self, kind: str, body: dict[str, Any]) -> Answer:
        status, answer = await self.ledger.send(kind, body)
        if status >= 500 or status in (401, 403):
            raise Unavailable(_error(answer).get("message", f"HTTP {status}"))
        return status, answer

    async def _execute(self, run_id: str, name: str, version: int, flow: Flow, compiled: Compiled, first: Answer | None) -> Answer:
        done = []
        steps: list[dict[str, Any]] = []
        failure: dict[str, Any] | None = None
        for index, step in enumerate(compiled.steps):
            if index == 0 and first is not None:
                status, answer = first
                if status >= 500:
                    raise Unavailable(_error(answer).get("message", f"HTTP {status}"))
            else:
                status, answer = await self._send(step.kind, step.body)
            steps.append({"name": step.name, "type": step.kind, "command": step.body, **_summary(status, answer)})
            if status != 200:
                failure = _error(answer)
                break
            done.append(step)
        compensations: list[dict[str, Any]] = []
        state = SUCCEEDED
        if failure is not None:
            state = FAILED if not done else COMPENSATED
            for step in reversed(done):
                assert step.compensation is not None, "validation requires a compensation for every step but the last"
                kind, body = step.compensation
                status, answer = await self._send(kind, body)
                compensations.append({"name": step.name, "type": kind, "command": body, **_summary(status, answer)})
                if status != 200:
                    state = COMPENSATION_FAILED
                    break
        view = self._view(run_id, name, version, compiled, state, steps, compensations, failure)
        outcome = _json.encode(view)
        if len(outcome) > outcome_bytes_max:  # keep the record within the core's bound: ids and outcomes only
            for entry in steps + compensations:
                entry["command"] = {"dedup_id": entry["command"]["dedup_id"]}
            outcome = _json.encode(view)
        if self.finish_in_background and first is not None and run_id not in self._finishing:
            task = asyncio.get_running_loop().create_task(self._finish(run_id, outcome, state))
            self._finishing[run_id] = task
            task.add_done_callback(lambda _: self._finishing.pop(run_id, None))
            return _answer(view)
        await self._finish(run_id, outcome, state)
        recorded = await self.ledger.run_record(run_id)
        if recorded is not None and recorded.outcome is not None and recorded.outcome != outcome:
            view = msgspec.json.decode(recorded.outcome)  # another runner finished first: its outcome stands
        return _answer(view)

    async def _finish(self, run_id: str, outcome: bytes, state: str) -> None:
        status, answer = await self.ledger.finish(run_id, outcome)
        if status >= 500:
            logger.warning("run %s ended %s but its record was not written (a retry or recovery will): %s", run_id, state, answer)

    @staticmethod
    def _view(
        run_id: str,
        name: str,
        version: int,
        compiled: Compiled,
        state: str,
        steps: list[dict[str, Any]],
        compensations: list[dict[str, Any]],
        failure: dict[str, Any] | None,
    ) -> dict[str, Any]:
        if not steps:
            steps = [{"name": step.name, "type": step.kind, "command": step.body} for step in compiled.steps]
        view: dict[str, Any] = {
            "run_id": run_id,
            "flow": name,
            "version": version,
            "status": state,
            "params": compiled.params,
            "computed": compiled.computed,
            "steps": steps,
            "compensations": compensations,
        }
        if failure is not None:
            view["error"] = failure
        return view

    async def view(self, run_id: str) -> Answer:
        """GET /v1/flows/runs/{run_id}: the recorded outcome, or the record of a run still open."""
        finishing = self._finishing.get(run_id)
        if finishing is not None:
            await asyncio.shield(finishing)
        record = await self.ledger.run_record(run_id)
        if record is None:
            return 404, {"error": {"code": ErrorCode.FLOW_RUN_NOT_FOUND.value, "message": f"no flow run {run_id!r}"}}
        if record.outcome is not None:
            return 200, msgspec.json.decode(record.outcome)
        return 200, {
            "run_id": run_id,
            "flow": record.flow,
            "version": record.version,
            "status": RUNNING,
            "params": msgspec.json.decode(record.params),
            "started_ms": record.time_ms,
        }

    # ------------------------------------------------------------------ recovery

    async def recover_once(self, now_ms: int | None = None) -> int:
        """Resume the runs left unfinished longer than ``resume_after_s``; returns how many."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        resumed = 0
        for record in await self.ledger.open_runs(recovery_batch_max):
            if now_ms - record.time_ms < resume_after_s * 1000:
                continue
            try:
                await self.resume(record)
                resumed += 1
            except (Unavailable, FlowError) as error:
                logger.warning("flow run %s not resumed yet: %s", record.run_id, error)
        return resumed

    async def recover(self) -> None:
        """Forever: resume abandoned runs (a task on every node that runs flows)."""
        while True:
            await asyncio.sleep(recovery_interval_s)
            try:
                await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the next round tries again
                logger.warning("flow run recovery failed: %s", error)


def _answer(view: dict[str, Any]) -> Answer:
    if view.get("status") == SUCCEEDED:
        return 200, view
    return 409, view
