"""The transaction layer: accounts partitioned into shards, and atomic movements across shards."""
