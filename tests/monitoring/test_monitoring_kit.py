"""The Grafana dashboard and the Prometheus alert rules in monitoring/ name only metrics a node serves."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coffer.client import Client
from tests.service.server_process import CofferServer

monitoring = Path(__file__).resolve().parents[2] / "monitoring"
metric_name = re.compile(r"\bcoffer_[a-z0-9_]+")
suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every sample name a node's /metrics can hold (a labelled family may have no sample yet)."""
    node = CofferServer(tmp_path_factory.mktemp("monitoring") / "data")
    node.start()
    try:
        with Client(node.url) as client:
            client.create_account("watched", "USD")
        text = httpx.get(node.url + "/metrics").text
    finally:
        node.stop()
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    yield names


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [variable.get("query", "") for variable in dashboard["templating"]["list"]]
    return expressions


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load((monitoring / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_every_metric_the_dashboard_names_is_served(served: set[str]) -> None:
    named = {name for expression in _dashboard_expressions() for name in metric_name.findall(expression)}
    assert named and named - served == set()


def test_every_metric_the_alerts_name_is_served(served: set[str]) -> None:
    named = {name for rule in _alert_rules() for name in metric_name.findall(rule["expr"])}
    assert named and named - served == set()


def test_the_alerts_cover_lags_latency_errors_and_checkpoints() -> None:
    expressions = " ".join(rule["expr"] for rule in _alert_rules())
    for watched in (
        "coffer_log_apply_lag_entries",
        "coffer_event_store_lag_events",
        "coffer_log_append_seconds_bucket",
        'status=~"5.."',
        'status="503"',
        "coffer_checkpoint_diverged",
        "coffer_checkpoint_peers_disagreeing",
    ):
        assert watched in expressions
    for rule in _alert_rules():
        assert rule["alert"].startswith("Coffer") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] == "Coffer"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(target["expr"] and target["refId"] for target in panel["targets"])
    # The scrape configuration loads the rules this test reads.
    assert "alerts.yml" in yaml.safe_load((monitoring / "prometheus.yml").read_text())["rule_files"]
