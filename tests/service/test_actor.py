"""Who did it: every event records which credential sent its command (key id and role, never the key)."""

import hashlib
from collections.abc import Callable

import httpx

from tests.service.server_process import CofferServer

admin_key = "admin-key-0123456789abcdef"
operator_key = "operator-key-0123456789abcdef"


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def test_events_name_the_key_and_role_that_sent_each_command(server_factory: Callable[..., CofferServer]) -> None:
    node = server_factory(environment={"COFFER_API_KEYS": f"admin:{admin_key},operator:{operator_key}"})
    with httpx.Client(base_url=node.url, timeout=30) as http:
        admin = {"X-API-Key": admin_key}
        operator = {"Authorization": f"Bearer {operator_key}"}
        created = http.post("/v1/accounts", json={"dedup_id": "who-open", "account_id": "who", "asset": "USD"}, headers=admin)
        assert created.status_code == 200, created.text
        deposit = {"dedup_id": "who-in", "legs": [{"account_id": "who", "amount": "5", "asset": "USD"}]}
        moved = http.post("/v1/batch-operations", json=deposit, headers=operator)
        assert moved.status_code == 200, moved.text
        events = http.get("/v1/events", params={"from_seq": created.json()["seq"]}, headers=admin).json()["events"]
        assert [(event["dedup_id"], event["actor"]) for event in events] == [
            ("who-open", {"key_id": _key_id(admin_key), "role": "admin"}),
            ("who-in", {"key_id": _key_id(operator_key), "role": "operator"}),
        ]
        assert all(event["format"] == 2 for event in events)
        text = http.get("/v1/events", params={"from_seq": 1}, headers=admin).text
        assert admin_key not in text and operator_key not in text
