"""The limits of the HTTP contract (docs/api.md), each defined once and imported where it applies.

The client checks them before it sends, the servers refuse past them, the benchmarks and the
command line split their work by them: one number each, so that they cannot drift apart.
"""

commands_per_request_max = 8190  # one POST /v1/commands, and so one log entry: ~2 MB of JSON, ~10 ms to apply
request_bytes_max = 16 * 1024 * 1024  # a full POST /v1/commands of 8190 commands fits with room
query_integer_max = 2**63 - 1  # seqs, limits and times are stored as signed 64-bit integers
query_limit_default = 1000  # a page holds this many items unless ``limit`` says otherwise
query_limit_max = 10_000  # a page never holds more: bounds the memory and the time of one answer
