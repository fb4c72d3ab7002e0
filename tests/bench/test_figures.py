"""Benchmark figures: per-second samples, ``--json`` for comparing runs, and the ``--plot`` picture."""

import json
from array import array
from pathlib import Path

from click.testing import CliRunner

from coffer.bench import figures
from coffer.cli import main
from tests.service.server_process import CofferServer


def test_per_second_folds_answers_into_seconds() -> None:
    begin = 100.0
    # worker 1: answers at 100.2 (2 ok), 100.9 (1 ok), 102.5 (0 ok); worker 2: one at 100.5 (1 ok)
    one = (array("d", [100.2, 100.9, 102.5]), array("q", [0, 2, 3]), array("d", [1.0, 3.0, 9.0]), 3)
    two = (array("d", [100.5]), array("q", [0]), array("d", [2.0]), 1)
    samples = figures.per_second(begin, [one, two])
    assert [sample["second"] for sample in samples] == [0, 1, 2]
    assert [sample["tps"] for sample in samples] == [4, 0, 0]
    assert [sample["requests"] for sample in samples] == [3, 0, 1]
    assert (samples[0]["p50_ms"], samples[0]["p99_ms"], samples[2]["p99_ms"]) == (2.0, 3.0, 9.0)


def test_result_lines_become_numbers() -> None:
    assert figures.result_fields("mode=single tps=812 p50_ms=1.25 errors=0 verdict") == {
        "mode": "single",
        "tps": 812,
        "p50_ms": 1.25,
        "errors": 0,
    }


def test_bench_load_writes_its_figures_and_a_plot(tmp_path: Path) -> None:
    server = CofferServer(tmp_path / "data")
    server.start()
    try:
        plot, data = tmp_path / "load.png", tmp_path / "load.json"
        arguments = ["bench", "load", "--url", server.url, "--duration", "2", "--concurrency", "4", "--processes", "1"]
        arguments += ["--accounts", "10", "--plot", str(plot), "--json", str(data)]
        done = CliRunner().invoke(main, arguments, catch_exceptions=False)
        assert done.exit_code == 0, done.output
    finally:
        server.stop()
    figure = json.loads(data.read_text())
    assert figure["format"] == figures.figure_format and figure["command"] == "bench load"
    assert figure["parameters"]["duration"] == 2.0 and figure["result"]["mode"] == "single"
    assert figure["result"]["tps"] > 0 and figure["result"]["errors"] == 0
    samples = figure["samples"]
    assert len(samples) >= 2 and sum(sample["tps"] for sample in samples) > 0
    assert all(sample["p50_ms"] <= sample["p99_ms"] <= sample["p999_ms"] for sample in samples if sample["requests"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_every_bench_command_takes_json() -> None:
    bench = main.commands["bench"]
    for name, command in bench.commands.items():  # type: ignore[attr-defined]
        assert any(option.name == "json_path" for option in command.params), name
