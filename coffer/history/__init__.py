"""The node's own history: the event store the replica writes as it applies (SQLite, beside the log).

Below the servers and the read side: the replica writes here, the node's HTTP server and the
query code read from here, and nothing here imports either of them.
"""
