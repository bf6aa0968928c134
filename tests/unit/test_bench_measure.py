"""The benchmark's arithmetic: ratios against the reference of the same run, targets, the table."""

from __future__ import annotations

import json

from bench.measure import Figure, markdown, meets, percentile, ratio, to_json


def figures() -> dict[str, Figure]:
    reference = Figure("latency.reference", "reference", "us", [100.0, 80.0, 120.0])
    ours = Figure("latency.ours", "ours", "us", [150.0, 140.0, 400.0], reference="latency.reference", target=1.5)
    rate = Figure("rate.ours", "ours, 64 in flight", "calls/s", [50.0], higher_is_better=True, reference="rate.reference", target=0.7)
    rate_reference = Figure("rate.reference", "reference, 64 in flight", "calls/s", [100.0], higher_is_better=True)
    return {figure.key: figure for figure in (reference, ours, rate, rate_reference)}


def test_ratio_is_of_medians_so_one_slow_round_does_not_decide() -> None:
    by_key = figures()
    assert by_key["latency.ours"].median == 150.0 and by_key["latency.ours"].spread == (140.0, 400.0)
    assert ratio(by_key["latency.ours"], by_key) == 1.5
    assert ratio(by_key["latency.reference"], by_key) is None  # a reference has no reference


def test_targets_read_the_right_way_round() -> None:
    by_key = figures()
    assert meets(by_key["latency.ours"], 1.5).startswith("yes")   # lower is better: at most 1.5x
    assert meets(by_key["latency.ours"], 1.51).startswith("NO")
    assert meets(by_key["rate.ours"], 0.5).startswith("NO")       # higher is better: at least 0.7x
    assert meets(by_key["rate.ours"], 0.7).startswith("yes")
    assert meets(by_key["latency.reference"], None) == ""


def test_percentile_of_all_calls() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 100.0 and percentile(values, 0.5) == 51.0
    assert percentile([], 0.99) != percentile([], 0.99)  # NaN: nothing measured


def test_table_and_json_carry_every_figure_with_its_ratio() -> None:
    by_key = figures()
    table = markdown(list(by_key.values()))
    assert table.count("\n") == 1 + len(by_key)
    assert "| ours | 150 us | 140-400 |" in table and "1.50x | yes (<= 1.5x)" in table
    assert "0.50x | NO (>= 0.7x)" in table
    data = json.loads(to_json(list(by_key.values()), {"pin": "none"}))
    assert data["context"] == {"pin": "none"}
    assert {row["key"]: row["ratio"] for row in data["figures"]}["rate.ours"] == 0.5
