"""The role each operation declares in the OpenAPI document (``x-coffer-role``) is the one the node enforces.

docs/api.md states each route's role from that declaration; this asks a node with keys: a key of
the declared role gets past the role check (anything but 401/403), a key of the role below it is
refused with 403, and a route declared ``none`` answers without a key.
"""

from collections.abc import Iterator

import httpx
import pytest

from coffer.server.openapi import openapi_document
from tests.service.server_process import CofferServer

keys = {"reader": "reader-key-0123456789", "operator": "operator-key-0123456789", "admin": "admin-key-0123456789"}
below = {"operator": "reader", "admin": "operator"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = CofferServer(
        tmp_path_factory.mktemp("roles") / "data", {"COFFER_API_KEYS": ",".join(f"{role}:{key}" for role, key in keys.items())}
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _status(url: str, method: str, path: str, key: str | None) -> int:
    headers = {} if key is None else {"x-api-key": key}
    concrete = path.replace("{account_id}", "role-check").replace("{node_id}", "role-check")
    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
        if path == "/v1/events/stream":
            with client.stream(method, concrete, params={"from_seq": 1}) as response:
                return response.status_code
        body = b"{}" if method in ("POST", "PUT") else None
        return client.request(method, concrete, content=body).status_code


operations = [
    (path, method.upper(), operation["x-coffer-role"])
    for path, item in openapi_document()["paths"].items()
    for method, operation in item.items()
]


@pytest.mark.parametrize(("path", "method", "role"), operations, ids=[f"{method} {path}" for path, method, _ in operations])
def test_the_declared_role_is_enforced(keyed: str, path: str, method: str, role: str) -> None:
    if role == "none":
        assert _status(keyed, method, path, None) not in (401, 403)
        return
    assert _status(keyed, method, path, None) == 401
    assert _status(keyed, method, path, keys[role]) not in (401, 403)
    if role in below:
        assert _status(keyed, method, path, keys[below[role]]) == 403
