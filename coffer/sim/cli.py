"""``coffer sim``: run the deterministic simulator for one seed or for seeds 1..K.

Register with ``main.add_command(sim)`` in :mod:`coffer.cli`. Output: one line per seed
(``seed=N steps= faults= entries= events= answers= digest=``), then for each failing seed the
first violated invariant, the last steps of its trace and the command that replays it. The last
line is ``sim: seeds=<int> steps=<int> faults=<int> violations=<int>`` (steps and faults summed
over the seeds), followed by `` digest=<hex>`` when one seed ran. Exit status 1 if any seed
broke an invariant.
"""

import click


@click.command("sim")
@click.option("--seed", type=int, help="run this one seed [default: 1]")
@click.option("--seeds", "seed_count", type=click.IntRange(min=1), help="run seeds 1..K and print a summary")
@click.option("--steps", default=1_000, show_default=True, type=click.IntRange(min=0), help="steps per seed")
@click.option("--replicas", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--clients", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--trace", "show_trace", is_flag=True, help="print every step of the run (one seed)")
@click.option(
    "--shards",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=1024),
    help="2 or more: simulate the transaction layer (shards, coordinators, recovery) instead of one shard's replicas",
)
@click.option(
    "--scale-report",
    is_flag=True,
    help="with --shards: count the work of every shared component (routers, recovery, shard map) at several total rates",
)
@click.option(
    "--rates",
    default="128,512,2048",
    show_default=True,
    help="--scale-report: total rates, transfers per tick (from 128: two routers, so every shard has its full set of recovery scanners)",
)
@click.option("--ticks", default=4, show_default=True, type=click.IntRange(min=1), help="--scale-report: ticks (recovery rounds) per rate")
def sim(
    seed: int | None,
    seed_count: int | None,
    steps: int,
    replicas: int,
    clients: int,
    show_trace: bool,
    shards: int,
    scale_report: bool,
    rates: str,
    ticks: int,
) -> None:
    """Simulate replicas, clients and faults in one process from a seed; check the invariants after every step."""
    from coffer.progress import progress_over
    from coffer.sim.simulator import Simulation

    if seed is not None and seed_count is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    seeds = range(1, seed_count + 1) if seed_count is not None else [1 if seed is None else seed]
    if scale_report:
        if shards < 2:
            raise click.UsageError("--scale-report needs --shards 2 or more")
        _scale_report(seeds[0], shards, rates, ticks)
        return
    if shards > 1:
        if shards > 64:
            raise click.UsageError("the fault simulation of the transaction layer takes up to 64 shards")
        _simulate_shards(list(seeds), steps, shards)
        return
    if show_trace and len(seeds) > 1:
        raise click.UsageError("--trace needs a single --seed")
    steps_total = faults_total = violations = 0
    digest = ""
    for number in progress_over(seeds, "simulating", unit="seeds", shown=len(seeds) > 1):
        simulation = Simulation(number, steps, replicas, clients, keep_full_trace=show_trace)
        report = simulation.run()
        if simulation.full_trace is not None:
            for line in simulation.full_trace:
                click.echo(f"  {line}")
        steps_total += report.steps
        faults_total += report.fault_count
        digest = report.digest
        click.echo(
            f"seed={number} steps={report.steps} faults={report.fault_count} entries={report.entries} "
            f"events={report.events} answers={report.answers} digest={report.digest}"
        )
        violation = report.violation
        if violation is not None:
            violations += 1
            step = "settle" if violation.step > steps else violation.step  # the final catch-up after the steps
            click.echo(f"VIOLATION seed={number} step={step} invariant={violation.invariant}: {violation.detail}")
            click.echo("  last steps:")
            for line in violation.trace:
                click.echo(f"    {line}")
            replay = f"coffer sim --seed {number} --steps {steps}"
            if replicas != 3 or clients != 4:
                replay += f" --replicas {replicas} --clients {clients}"
            click.echo(f"  replay: {replay}")
    summary = f"sim: seeds={len(seeds)} steps={steps_total} faults={faults_total} violations={violations}"
    if len(seeds) == 1:
        summary += f" digest={digest}"
    click.echo(summary)
    if violations:
        raise SystemExit(1)


def _simulate_shards(seeds: list[int], steps: int, shards: int) -> None:
    """The transaction layer's simulation (:mod:`coffer.sim.shards`); last line ``sim-shards: …``."""
    import logging

    from coffer.sim.shards import ShardSimulation

    logging.getLogger("coffer.txn").setLevel(logging.ERROR)  # every recovery logs a warning
    totals = {"transfers": 0, "committed": 0, "tcc_tries": 0, "tcc_committed": 0, "tcc_expired": 0, "faults": 0, "recovered": 0}
    violations = 0
    for number in seeds:
        report = ShardSimulation(number, shards).run(steps)
        for key in totals:
            totals[key] += getattr(report, key)
        click.echo(
            f"seed={number} shards={shards} steps={steps} transfers={report.transfers} committed={report.committed} "
            f"tcc_tries={report.tcc_tries} tcc_committed={report.tcc_committed} tcc_expired={report.tcc_expired} "
            f"faults={report.faults} recovered={report.recovered}"
        )
        if report.violations:
            violations += 1
            click.echo(f"VIOLATION seed={number}: {report.violations[0]}")
            click.echo(f"  replay: coffer sim --shards {shards} --seed {number} --steps {steps}")
    click.echo(
        f"sim-shards: seeds={len(seeds)} shards={shards} steps={steps * len(seeds)} transfers={totals['transfers']} "
        f"committed={totals['committed']} tcc_tries={totals['tcc_tries']} tcc_committed={totals['tcc_committed']} "
        f"tcc_expired={totals['tcc_expired']} faults={totals['faults']} recovered={totals['recovered']} violations={violations}"
    )
    if violations:
        raise SystemExit(1)


def _scale_report(seed: int, shards: int, rates_text: str, ticks: int) -> None:
    """:mod:`coffer.sim.scale`: one ``scale:`` line per rate, then whether any shared work grew with it."""
    import logging

    from coffer.sim.scale import scale_report

    logging.getLogger("coffer.txn").setLevel(logging.ERROR)
    try:
        rates = [int(part) for part in rates_text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated whole numbers", param_hint="--rates") from None
    figures = scale_report(seed, shards, rates, ticks)
    for figure in figures:
        click.echo(figure.line())
    first, last = figures[0], figures[-1]
    growth = last.rate_per_tick / first.rate_per_tick
    click.echo(
        f"scale-report: rate x{growth:g} -> router_load x{last.router_transfers_per_tick_max / first.router_transfers_per_tick_max:.2f} "
        f"shard_requests_per_transfer x{last.shard_requests_per_transfer / first.shard_requests_per_transfer:.2f} "
        f"map_lookups_per_transfer x{last.map_lookups_per_transfer / first.map_lookups_per_transfer:.2f} "
        f"recovery_requests_per_round x{last.recovery_requests_per_router_round / first.recovery_requests_per_router_round:.2f} "
        f"recovery_scans_per_shard_tick x{last.recovery_scans_per_shard_tick / first.recovery_scans_per_shard_tick:.2f} "
        f"routers x{last.routers / first.routers:g}"
    )
