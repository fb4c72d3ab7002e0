"""Deterministic simulation of a Coffer shard under faults (``coffer sim``).

:mod:`coffer.sim.simulator` runs replicas, clients and a shared log in one process from one seed;
:mod:`coffer.sim.workload` makes the clients' commands; :mod:`coffer.sim.checker` checks the
SPEC's invariants after every step. Same seed, same run, same digest. Nothing is imported here,
so that ``coffer.sim.cli`` stays cheap to load for ``coffer --help``.
"""
