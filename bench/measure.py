"""What one benchmark figure is, and how a run is summarised and printed.

A `Figure` holds every sample of one measurement (one sample per round), so
the report can print the median and the spread, and the ratio to the figure
it is compared against (`reference`), computed from medians of the same run.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    key: str                    # stable id, e.g. "latency.sync"
    label: str                  # what a reader sees in the table
    unit: str                   # "us", "calls/s", "ms", "MiB", "MiB/s", "us CPU/call"
    samples: list[float]        # one per round
    higher_is_better: bool = False
    reference: str | None = None    # key of the figure this one is compared with
    target: float | None = None     # the ratio to the reference we aim for (<= for lower-is-better)
    p99: float | None = None        # for latencies: the 99th percentile of every call of every round
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.samples), max(self.samples)) if self.samples else (float("nan"), float("nan"))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sum_of(key: str, label: str, parts: list[Figure]) -> Figure:
    """A figure whose sample of each round is the sum of `parts`' samples of that round:
    a budget made of two costs measured in the same rounds (rounds are interleaved, so
    a noisy moment weighs on every part of one sum alike)."""
    if not parts or len({len(part.samples) for part in parts}) != 1 or len({part.unit for part in parts}) != 1:
        raise ValueError(f"{key}: parts must share one unit and one number of rounds")
    return Figure(key, label, parts[0].unit, [sum(samples) for samples in zip(*(part.samples for part in parts), strict=True)])


def ratio(figure: Figure, figures: dict[str, Figure]) -> float | None:
    if figure.reference is None or figure.reference not in figures:
        return None
    base = figures[figure.reference].median
    return figure.median / base if base else None


def meets(figure: Figure, value: float | None) -> str:
    if figure.target is None or value is None:
        return ""
    ok = value >= figure.target if figure.higher_is_better else value <= figure.target
    sign = ">=" if figure.higher_is_better else "<="
    return f"{'yes' if ok else 'NO'} ({sign} {figure.target:.3g}x)"


def _number(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(figures: list[Figure]) -> str:
    by_key = {figure.key: figure for figure in figures}
    lines = [
        "| figure | median | spread (min-max) | p99 | vs | ratio | target met |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for figure in figures:
        low, high = figure.spread
        value = ratio(figure, by_key)
        versus = by_key[figure.reference].label if figure.reference in by_key else ""
        note = f" ({figure.note})" if figure.note else ""
        lines.append(
            f"| {figure.label}{note} | {_number(figure.median)} {figure.unit} | {_number(low)}-{_number(high)} | "
            f"{_number(figure.p99) if figure.p99 is not None else ''} | {versus} | "
            f"{f'{value:.2f}x' if value is not None else ''} | {meets(figure, value)} |"
        )
    return "\n".join(lines)


def to_json(figures: list[Figure], context: dict[str, Any]) -> str:
    by_key = {figure.key: figure for figure in figures}
    rows = []
    for figure in figures:
        row = asdict(figure)
        row.update(median=figure.median, spread=list(figure.spread), ratio=ratio(figure, by_key))
        rows.append(row)
    return json.dumps({"context": context, "figures": rows}, indent=2)
