"""One keep-alive HTTP client per thread, for what polls or checks nodes on loopback.

Why not ``httpx.get``: each call builds a client, and with it a TLS context that loads the CA
bundle — 158 ms of CPU under the GIL measured on a loaded 2-core machine, even for a plain
``http://`` URL (a kept client with ``verify=False`` costs 3 ms to build, once). A checker that reads
thousands of transactions that way was bound by it (15 reads/s on a loaded machine, against about
200/s with a kept client). What polls a node it started (its readiness) or a local cluster speaks plain
HTTP on loopback, so the kept client builds no verifying context (``verify=False``).
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
