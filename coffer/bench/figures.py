"""Benchmark figures as files: JSON for comparing runs, and a picture of ``bench load``.

Job: a benchmark's printed lines are for a person at a terminal; comparing two runs (before and
after a change, on two machines) wants the numbers in a file. ``--json FILE`` on every ``coffer
bench`` command writes the command, its parameters, the key=value pairs of its result line, every
line it printed and, for ``bench load``, one sample per second of the load (transfers answered
200, requests, latency percentiles). ``bench load --plot FILE.png`` draws those samples: latency percentiles and
throughput over time.

Method: the command's ``echo`` goes through a :class:`Recorder`, which prints and keeps each
line; ``bench load`` records, beside each request's latency, when its answer came and how many
transfers its worker had seen answered 200 before it, and :func:`per_second` folds them into seconds. The picture is drawn with
matplotlib's Agg backend (no display needed), imported only when a plot is asked for.
"""

import functools
import json
import math
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

figure_format = "coffer-bench-1"
percentiles = (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))


def result_fields(line: str) -> dict[str, Any]:
    """``key=value`` pairs of a result line; numbers as numbers."""
    fields: dict[str, Any] = {}
    for word in line.split():
        key, separator, value = word.partition("=")
        if not separator or not key:
            continue
        try:
            fields[key] = int(value)
        except ValueError:
            try:
                fields[key] = float(value)
            except ValueError:
                fields[key] = value
    return fields


class Recorder:
    """Prints a benchmark's lines and keeps them, with what the command was run with."""

    def __init__(self, command: str, parameters: dict[str, Any]) -> None:
        self.command = command
        self.parameters = {key: str(value) if isinstance(value, Path) else value for key, value in parameters.items()}
        self.lines: list[str] = []

    def echo(self, line: str) -> None:
        click.echo(line)
        self.lines.append(line)

    def figure(self, samples: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        result_line = next((line for line in reversed(self.lines) if "=" in line), "")
        return {
            "format": figure_format,
            "command": self.command,
            "parameters": self.parameters,
            "result": result_fields(result_line),
            "lines": self.lines,
            "samples": list(samples),
        }


def _nearest_rank(ordered: list[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else 0.0


def per_second(begin: float, workers: Sequence[tuple[array, array, array, int]]) -> list[dict[str, Any]]:
    """One sample per second since ``begin``: transfers answered 200, requests and latency percentiles.

    Each worker gives parallel arrays, one entry per answered request (the answer's monotonic
    time, the worker's count of transfers answered 200 before it, its latency in ms), and its
    final count; a request's transfers answered 200 are the difference to the next count.
    """
    seconds: dict[int, dict[str, Any]] = {}
    for times, ok_before, latencies, ok_total in workers:
        counts = [*ok_before, ok_total]
        for position, (moment, latency) in enumerate(zip(times, latencies, strict=True)):
            bucket = seconds.setdefault(max(0, int(moment - begin)), {"ok": 0, "latencies": []})
            bucket["ok"] += counts[position + 1] - counts[position]
            bucket["latencies"].append(latency)
    samples = []
    for second in range(max(seconds, default=-1) + 1):
        bucket = seconds.get(second, {"ok": 0, "latencies": []})
        ordered = sorted(bucket["latencies"])
        sample = {"second": second, "tps": bucket["ok"], "requests": len(ordered)}
        sample.update({name: round(_nearest_rank(ordered, share), 3) for name, share in percentiles})
        samples.append(sample)
    return samples


def write_json(path: Path, figure: dict[str, Any]) -> None:
    path.write_text(json.dumps(figure, indent=2) + "\n")


def plot_load(path: Path, figure: dict[str, Any]) -> None:
    """Latency percentiles (top, log scale) and transfers per second (bottom) over the seconds of the load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    samples = figure["samples"]
    seconds = [sample["second"] for sample in samples]
    canvas, (latency, throughput) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    for name, _ in percentiles:
        values = [sample[name] if sample["requests"] else math.nan for sample in samples]
        latency.plot(seconds, values, marker=".", label=name.removesuffix("_ms"))
    latency.set_ylabel("latency (ms)")
    if any(sample["requests"] for sample in samples):
        latency.set_yscale("log")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend(loc="upper right")
    throughput.bar(seconds, [sample["tps"] for sample in samples], width=0.8, color="#2563eb")
    throughput.set_ylabel("transfers answered 200 per second")
    throughput.set_xlabel("seconds since the load began")
    throughput.grid(True, axis="y", alpha=0.3)
    result = figure["result"]
    title = " ".join(f"{key}={result[key]}" for key in ("mode", "tps", "p50_ms", "p99_ms", "errors") if key in result)
    canvas.suptitle(f"coffer bench load  {title}")
    canvas.savefig(path, dpi=100)
    pyplot.close(canvas)


def json_option(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--json FILE`` to a bench command; the command gets a ``recorder`` and may return samples."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="also write the figures (parameters, result, lines, samples) to this JSON file, to compare runs",
        )
        @functools.wraps(function)
        def wrapper(json_path: Path | None, **parameters: Any) -> None:
            recorder = Recorder(command, parameters)
            samples = function(recorder=recorder, **parameters)
            if json_path is not None:
                write_json(json_path, recorder.figure(samples or ()))

        return wrapper

    return decorate
