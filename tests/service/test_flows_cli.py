"""``coffer flows``, ``coffer account velocity`` and ``coffer bench flows`` against a real node."""

import json
import uuid

from click.testing import CliRunner

from coffer import Client
from coffer.cli import main
from coffer.client import Leg
from coffer.flows.files import library_dir
from tests.service.server_process import CofferServer


def invoke(*arguments: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(arguments))
    return result.exit_code, result.stdout, result.stderr


def test_flows_commands(server: CofferServer, tmp_path) -> None:
    url = ["--url", server.url]
    code, out, _ = invoke("flows", "apply", *url, str(library_dir / "top_up.yaml"), str(library_dir / "payment_with_fee.yaml"))
    assert code == 0 and "top_up  version" in out and "payment_with_fee  version" in out
    flow_file = tmp_path / "renamed.json"
    flow_file.write_text(json.dumps({"mode": "atomic", "params": {"w": {"type": "account"}}, "steps": [{"name": "go", "tcc_cancel": {"txn_id": "{w}"}}]}))
    code, out, _ = invoke("flows", "apply", *url, str(flow_file), "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "renamed"
    code, out, _ = invoke("flows", "list", *url)
    assert code == 0 and "payment_with_fee" in out and "renamed" in out
    code, out, _ = invoke("flows", "show", *url, "top_up")
    assert code == 0 and json.loads(out)["mode"] == "atomic"
    bank, wallet, run_id = f"bank-{uuid.uuid4().hex[:8]}", f"wallet-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    with Client(server.url) as api:
        api.create_account(bank, "USD", lower_limit="-1000")
        api.create_account(wallet, "USD")
    params = ["--param", f"settlement={bank}", "--param", f"wallet={wallet}", "--param", "asset=USD", "--param", "amount=12.5"]
    code, out, _ = invoke("flows", "run", *url, "top_up", *params, "--dry-run")
    assert code == 0 and "DRY_RUN" in out
    code, out, _ = invoke("flows", "run", *url, "top_up", *params, "--dedup-id", run_id)
    assert code == 0 and "SUCCEEDED" in out and f"fl:{run_id}:top_up" in out
    code, out, _ = invoke("flows", "run-status", *url, run_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "SUCCEEDED"
    code, out, _ = invoke("flows", "run", *url, "top_up", "--params-json", json.dumps({"settlement": bank, "wallet": wallet, "asset": "USD", "amount": "2000"}))
    assert code == 1 and "LOWER_LIMIT_EXCEEDED" in out
    code, _, err = invoke("flows", "run", *url, "no-such-flow")
    assert code == 3 and "FLOW_NOT_FOUND" in err


def test_account_velocity_command(server: CofferServer) -> None:
    alice = f"alice-{uuid.uuid4().hex[:8]}"
    with Client(server.url) as api:
        api.create_account(alice, "USD")
        api.batch_operation([Leg(account_id=alice, amount="10", asset="USD")])
    code, out, _ = invoke("account", "velocity", "--url", server.url, alice, "--amount-per-day", "5", "--debits-per-hour", "3", "--json")
    assert code == 0, out
    with Client(server.url) as api:
        assert api.get_account(alice).velocity["amount_per_day"] == "5.00"  # type: ignore[index]


def test_bench_flows_prints_its_last_line(server: CofferServer) -> None:
    code, out, _ = invoke("bench", "flows", "--url", server.url, "--duration", "0.5", "--rounds", "1", "--concurrency", "4", "--accounts", "5")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("flow=payment_with_fee runs_per_s=") and " p99_ms=" in lines[-1]
    assert any(line.startswith("cost_ratio=") for line in lines)


def test_the_new_client_methods_are_twins() -> None:
    import inspect

    from coffer.client import AsyncClient

    names = ("put_flow", "list_flows", "get_flow", "run_flow", "get_flow_run", "set_velocity_limits")
    names += ("create_webhook", "list_webhooks", "webhook_deliveries", "replay_webhook", "delete_webhook")
    for name in names:
        sync, async_ = getattr(Client, name), getattr(AsyncClient, name)
        assert sync.__doc__ and sync.__doc__ == async_.__doc__, name
        assert inspect.signature(sync) == inspect.signature(async_), name
        assert inspect.iscoroutinefunction(async_), name
