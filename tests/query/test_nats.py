"""Publishing to NATS: every event, in order, with its seq; at least once across a crash."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import nats

from coffer.cluster.nats_servers import NatsCluster
from coffer.query.projector import Projector, published_progress_name
from coffer.query.sql_store import SqlStore
from tests.query.node_process import LoadedNode

wait_s_max = 30.0


async def _until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + wait_s_max
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def test_events_are_published_in_order_at_least_once(mixed_node: LoadedNode, store: SqlStore, tmp_path: Path) -> None:
    last_seq = mixed_node.last_seq
    first_event = httpx.get(f"{mixed_node.url}/v1/events", params={"limit": 1}).json()["events"][0]
    with NatsCluster(tmp_path / "nats", size=1, die_with_parent=True) as cluster:
        url = cluster.url(1)

        async def scenario() -> None:
            connection = await nats.connect(url)
            received: list[tuple[int, dict[str, Any]]] = []

            async def on_message(message: Any) -> None:
                received.append((int(message.headers["Coffer-Seq"]), json.loads(message.data)))

            await connection.subscribe("coffer.events.0", cb=on_message)
            await connection.flush()
            await Projector(mixed_node.url, store, nats_url=url).run(last_seq)
            await _until(lambda: len(received) >= last_seq)
            assert [seq for seq, _ in received] == list(range(1, last_seq + 1))
            assert all(body["seq"] == seq and body["shard"] == 0 for seq, body in received)
            assert {key: value for key, value in received[0][1].items() if key != "shard"} == first_event
            jetstream = connection.jetstream()
            assert (await jetstream.stream_info("COFFER_EVENTS_0")).state.messages == last_seq

            # A crash after publishing but before recording it: the events after the recorded seq
            # go out again. Subscribers see them twice (they drop seq <= last seen); the stream
            # drops the re-sent message ids.
            store.set_progress(f"{published_progress_name}.0", last_seq // 2)
            received.clear()
            await Projector(mixed_node.url, store, nats_url=url).run(last_seq)
            await _until(lambda: len(received) >= last_seq - last_seq // 2)
            assert [seq for seq, _ in received] == list(range(last_seq // 2 + 1, last_seq + 1))
            assert (await jetstream.stream_info("COFFER_EVENTS_0")).state.messages == last_seq
            replay = await jetstream.subscribe("coffer.events.0", ordered_consumer=True)
            replayed = [int((await replay.next_msg(timeout=5)).headers["Coffer-Seq"]) for _ in range(last_seq)]
            assert replayed == list(range(1, last_seq + 1))
            assert store.progress(f"{published_progress_name}.0") == last_seq
            await connection.close()

        asyncio.run(scenario())
