"""``coffer webhooks add|list|deliveries|replay|remove`` (joined to the main command by ``coffer.cli``)."""

from typing import TYPE_CHECKING, Any

import click

from coffer import cli_node  # the helpers of every command that talks to a node

if TYPE_CHECKING:
    from coffer.client import Client


@click.group("webhooks")
def webhooks() -> None:
    """Webhook subscriptions of a node: signed posts of its events, at least once, in seq order."""


def register(main: click.Group) -> None:
    talks = cli_node.talks_to_node

    @webhooks.command("add")
    @click.argument("target", metavar="URL")
    @click.option("--account", "accounts", multiple=True, help="only events touching this account (repeatable)")
    @click.option("--type", "event_types", multiple=True, help="only events of this type (repeatable)")
    @click.option("--below", nargs=2, metavar="ACCOUNT AMOUNT", help="only when ACCOUNT's available falls below AMOUNT")
    @click.option("--above", nargs=2, metavar="ACCOUNT AMOUNT", help="only when ACCOUNT's available rises above AMOUNT")
    @click.option("--timeout-ms", type=int, help="a post not answered in time is retried [default: 5000]")
    @click.option("--from-seq", type=int, help="deliver from this seq [default: the next event]")
    @talks
    def add(
        client: "Client",
        output: Any,
        target: str,
        accounts: tuple[str, ...],
        event_types: tuple[str, ...],
        below: tuple[str, str] | None,
        above: tuple[str, str] | None,
        timeout_ms: int | None,
        from_seq: int | None,
    ) -> None:
        """Subscribe URL (admin); prints the id and the signing secret (shown only now)."""
        if below and above:
            raise click.UsageError("--below and --above exclude each other")
        crossing = below or above
        threshold = None if not crossing else {"account_id": crossing[0], "amount": crossing[1], "direction": "below" if below else "above"}
        created = client.create_webhook(
            target, account_ids=accounts or None, event_types=event_types or None, threshold=threshold, timeout_ms=timeout_ms, from_seq=from_seq
        )
        if output.as_json:
            output.json(created)
        else:
            click.echo(f"id      {created['id']}\nsecret  {created['secret']}")

    @webhooks.command("list")
    @talks
    def list_webhooks(client: "Client", output: Any) -> None:
        """The subscriptions and how far each has delivered."""
        found = client.list_webhooks()
        if output.as_json:
            output.json(found)
            return
        rows = [[item["id"], item["url"], str(item["cursor_seq"])] for item in found]
        click.echo(cli_node.table(["id", "url", "delivered to seq"], rows, frozenset({2})))

    @webhooks.command("deliveries")
    @click.argument("subscription_id")
    @click.option("--limit", default=20, show_default=True)
    @talks
    def deliveries(client: "Client", output: Any, subscription_id: str, limit: int) -> None:
        """The delivery log of a subscription, newest attempt first."""
        found = client.webhook_deliveries(subscription_id, limit=limit)
        if output.as_json:
            output.json(found)
            return
        rows = [[str(row["seq"]), str(row["attempt"]), row["outcome"], str(row["http_status"] or "-"), row["error"] or ""] for row in found]
        click.echo(cli_node.table(["seq", "attempt", "outcome", "status", "error"], rows, frozenset({0, 1})))

    @webhooks.command("replay")
    @click.argument("subscription_id")
    @click.argument("from_seq", type=int)
    @talks
    def replay(client: "Client", output: Any, subscription_id: str, from_seq: int) -> None:
        """Deliver the subscription's events again from FROM_SEQ on (admin)."""
        output.json(client.replay_webhook(subscription_id, from_seq))

    @webhooks.command("remove")
    @click.argument("subscription_id")
    @talks
    def remove(client: "Client", output: Any, subscription_id: str) -> None:
        """Unsubscribe (admin)."""
        client.delete_webhook(subscription_id)
        click.echo(f"removed {subscription_id}")

    main.add_command(webhooks)
