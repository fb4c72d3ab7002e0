"""One keep-alive HTTP client per thread for the tools that poll a local cluster.

Why not ``httpx.get``: each call builds a client, and with it a TLS context that loads the CA
bundle — about 40 ms of CPU under the GIL, even for a plain ``http://`` URL. A checker that reads
thousands of transactions that way was bound by it (15 reads/s on a loaded machine, against about
200/s with a kept client). The nodes of a local cluster speak plain HTTP on loopback, so the kept
client builds no verifying context (``verify=False``).
"""

import threading

import httpx

_local = threading.local()


def client() -> httpx.Client:
    """This thread's client (its connections are kept between calls)."""
    kept: httpx.Client | None = getattr(_local, "client", None)
    if kept is None:
        kept = _local.client = httpx.Client(verify=False)
    return kept
