"""Deterministic simulation of a Coffer shard under faults (``coffer sim``).

:mod:`coffer.sim.simulator` runs the real replica of several nodes, clients and a shared log in
one process from one seed; :mod:`coffer.sim.log`, :mod:`coffer.sim.disk` and
:mod:`coffer.sim.snapshots` are the log, the disk and the snapshot writer it injects;
:mod:`coffer.sim.workload` makes the clients' commands; :mod:`coffer.sim.checker` checks the
SPEC's invariants after every step. Same seed, same run, same digest. Nothing is imported here,
so that ``coffer.sim.cli`` stays cheap to load for ``coffer --help``.
"""
