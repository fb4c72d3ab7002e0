"""Coffer: a strongly consistent wallet ledger.

Users import the client from here: ``from coffer import Client, RejectedError``. The names load
``coffer.client`` on first use, so that importing the pure core (``coffer.core``) or the server
does not pull in the HTTP client.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "CofferError",
    "InvalidRequestError",
    "NotAvailableError",
    "NotFoundError",
    "RejectedError",
    "TransportError",
    "__version__",
]

if TYPE_CHECKING:
    from coffer.client import (
        AsyncClient,
        AuthError,
        Client,
        CofferError,
        InvalidRequestError,
        NotAvailableError,
        NotFoundError,
        RejectedError,
        TransportError,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from coffer import client

        return getattr(client, name)
    raise AttributeError(f"module 'coffer' has no attribute {name!r}")
