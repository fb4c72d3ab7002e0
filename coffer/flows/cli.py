"""``coffer flows apply|list|show|run|run-status|library``, ``coffer account velocity`` and
``coffer bench flows`` (joined to the main command's groups by ``coffer.cli``)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from coffer import cli_node  # the helpers of every command that talks to a node
from coffer.bench.figures import Recorder, json_option

if TYPE_CHECKING:
    from coffer.client import Client


@click.group("flows")
def flows() -> None:
    """Business flows: versioned definitions (YAML or JSON files) run as core commands."""


def _param(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for entry in values:
        key, separator, value = entry.partition("=")
        if not separator or not key:
            raise click.UsageError(f"--param {entry!r}: write NAME=VALUE")
        params[key] = value
    return params


def register(main: click.Group, account: click.Group, bench: click.Group) -> None:
    talks, dedup = cli_node.talks_to_node, cli_node.dedup_option

    @flows.command("apply")
    @click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--name", help="the flow's name (one file only) [default: the file's name: field, else its stem]")
    @talks
    def apply(client: "Client", output: Any, files: tuple[Path, ...], name: str | None) -> None:
        """Register FILES (YAML or JSON definitions), each as the next version of its flow (admin)."""
        from coffer.flows.files import DefinitionFileError, read_definition

        if name is not None and len(files) != 1:
            raise click.UsageError("--name takes one file")
        registered = []
        for path in files:
            try:
                found, fields = read_definition(path)
            except DefinitionFileError as error:
                raise click.UsageError(str(error)) from None
            result = client.put_flow(name or found, fields)
            registered.append(result)
            if not output.as_json:
                click.echo(f"{result.name}  version {result.version}")
        if output.as_json:
            output.json(registered)

    @flows.command("library")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="copy the files here")
    def library(out_dir: Path | None) -> None:
        """The shipped library of common flows (apply them with coffer flows apply)."""
        from coffer.flows.files import library_dir

        for path in sorted(library_dir.glob("*.yaml")):
            if out_dir is None:
                click.echo(str(path))
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / path.name).write_bytes(path.read_bytes())
                click.echo(str(out_dir / path.name))

    @flows.command("list")
    @talks
    def list_flows(client: "Client", output: Any) -> None:
        """The registered flows and their latest versions."""
        found = client.list_flows()
        if output.as_json:
            output.json(found)
            return
        rows = [[flow.name, str(flow.version), flow.mode or "", flow.description[:60]] for flow in found]
        click.echo(cli_node.table(["flow", "version", "mode", "description"], rows, frozenset({1})))

    @flows.command("show")
    @click.argument("name")
    @click.option("--version", type=int, help="an older version [default: the latest]")
    @talks
    def show(client: "Client", output: Any, name: str, version: int | None) -> None:
        """A flow's definition, as apply takes it (JSON)."""
        output.json(client.get_flow(name, version))

    @flows.command("run")
    @click.argument("name")
    @click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="a param (repeatable); integers as digits")
    @click.option("--params-json", help="all params as one JSON object")
    @click.option("--version", type=int, help="run this version [default: the latest]")
    @click.option("--dry-run", is_flag=True, help="show the commands; apply nothing")
    @dedup
    @talks
    def run(
        client: "Client",
        output: Any,
        name: str,
        params: tuple[str, ...],
        params_json: str | None,
        version: int | None,
        dry_run: bool,
        dedup_id: str | None,
    ) -> None:
        """Run flow NAME once (its dedup_id makes a retry safe); prints the commands and their outcome."""
        values = json.loads(params_json) if params_json else {}
        values.update(_param(params))
        result = client.run_flow(name, values, dedup_id=dedup_id, version=version, dry_run=dry_run)
        _print_run(output, result)
        if not result.ok:
            click.get_current_context().exit(cli_node.exit_rejected)

    @flows.command("run-status")
    @click.argument("run_id")
    @talks
    def run_status(client: "Client", output: Any, run_id: str) -> None:
        """A run by its id (the dedup_id it was run with)."""
        _print_run(output, client.get_flow_run(run_id))

    def _print_run(output: Any, result: Any) -> None:
        if output.as_json:
            output.json(result)
            return
        click.echo(f"run {result.run_id}: {result.flow} version {result.version}  {result.status}")
        for key, value in result.computed.items():
            click.echo(f"  {key} = {value}")
        for title, entries in (("step", result.steps), ("undo", result.compensations)):
            for entry in entries:
                outcome = "" if "status" not in entry else f"  {entry['status']}"
                if entry.get("error"):
                    outcome += f" {entry['error'].get('code')}: {entry['error'].get('message', '')}"
                elif entry.get("seq") is not None:
                    outcome += f" seq {entry['seq']}"
                click.echo(f"  {title} {entry['name']}: {entry['type']} {entry['command'].get('dedup_id', '')}{outcome}")
        if result.error is not None:
            click.echo(f"error: {result.error.code}: {result.error.message}")

    main.add_command(flows)

    @account.command("velocity")
    @click.argument("account_id")
    @click.option("--amount-per-hour", help="most money out per UTC hour")
    @click.option("--amount-per-day", help="most money out per UTC day")
    @click.option("--debits-per-hour", type=click.IntRange(min=1), help="most debits per UTC hour")
    @click.option("--debits-per-day", type=click.IntRange(min=1), help="most debits per UTC day")
    @dedup
    @talks
    def velocity(
        client: "Client",
        output: Any,
        account_id: str,
        amount_per_hour: str | None,
        amount_per_day: str | None,
        debits_per_hour: int | None,
        debits_per_day: int | None,
        dedup_id: str | None,
    ) -> None:
        """Set ACCOUNT_ID's velocity caps (admin); caps not given are removed, none given removes them all."""
        result = client.set_velocity_limits(
            account_id,
            amount_per_hour=amount_per_hour,
            amount_per_day=amount_per_day,
            debits_per_hour=debits_per_hour,
            debits_per_day=debits_per_day,
            dedup_id=dedup_id,
        )
        cli_node.print_result(output, result)

    @bench.command("flows")
    @click.option("--url", help="a running node [default: start one on a temporary data directory]")
    @click.option("--duration", default=4.0, show_default=True, help="seconds per side and round")
    @click.option("--rounds", default=3, show_default=True, help="rounds of both sides, alternating")
    @click.option("--concurrency", default=32, show_default=True, help="requests in flight")
    @click.option("--accounts", "account_count", default=200, show_default=True, help="payers")
    @json_option("bench flows")
    def bench_flows(url: str | None, duration: float, rounds: int, concurrency: int, account_count: int, recorder: Recorder) -> None:
        """payment_with_fee as a flow run next to the plain batch operation it produces, in the same run."""
        from coffer.bench.flows import run as run_bench

        run_bench(url, duration, concurrency, account_count, rounds, echo=recorder.echo)
