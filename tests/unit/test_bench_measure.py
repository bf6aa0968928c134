"""The benchmark's arithmetic: ratios against the reference of the same run, targets, the table."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import ray_figures
from bench.measure import Figure, markdown, meets, percentile, ratio, sum_of, to_json


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


def test_a_budget_sums_the_parts_round_by_round() -> None:
    actor = Figure("latency.actor", "actor", "us", [500.0, 900.0, 520.0])
    pipe = Figure("latency.pipe", "pipe", "us", [60.0, 40.0, 50.0])
    budget = sum_of("latency.budget", "actor + pipe", [actor, pipe])
    assert budget.samples == [560.0, 940.0, 570.0] and budget.unit == "us"
    assert budget.median == 570.0  # the median of the sums, not the sum of the medians (550)
    with pytest.raises(ValueError, match="one number of rounds"):
        sum_of("x", "x", [actor, Figure("y", "y", "us", [1.0])])
    with pytest.raises(ValueError, match="one unit"):
        sum_of("x", "x", [actor, Figure("y", "y", "ms", [1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match="parts must"):
        sum_of("x", "x", [])


def ray_run(ours: list[float]) -> dict[str, Figure]:
    run = [
        Figure("latency.reference", "reference", "us", [50.0, 60.0, 40.0]),
        Figure("latency.peer_rayecho", "ray actor", "us", [500.0, 520.0, 480.0]),
        Figure("latency.supervisor_ray", "Ray launcher", "us", ours),
        Figure("throughput.peer_rayecho", "ray actor, 64", "calls/s", [2000.0], higher_is_better=True),
        Figure("throughput.supervisor_ray", "Ray launcher, 64", "calls/s", [1000.0], higher_is_better=True),
    ]
    return {figure.key: figure for figure in run}


def test_the_ray_target_is_the_actor_call_plus_the_pipe_of_the_same_rounds() -> None:
    by_key = ray_run([540.0, 600.0, 560.0])
    added = {figure.key: figure for figure in ray_figures(by_key)}
    by_key.update(added)
    assert added["latency.ray_budget"].samples == [550.0, 580.0, 520.0]
    versus = added["latency.supervisor_ray.vs_budget"]
    assert ratio(versus, by_key) == 560.0 / 550.0 and meets(versus, ratio(versus, by_key)).startswith("NO")
    assert ratio(added["throughput.supervisor_ray.vs_actor"], by_key) == 0.5
    met = ray_run([500.0, 560.0, 550.0])
    met.update({figure.key: figure for figure in ray_figures(met)})
    assert meets(met["latency.supervisor_ray.vs_budget"], ratio(met["latency.supervisor_ray.vs_budget"], met)).startswith("yes")


def test_no_ray_rows_without_both_ray_contestants() -> None:
    by_key = ray_run([540.0, 600.0, 560.0])
    del by_key["latency.peer_rayecho"]
    assert ray_figures(by_key) == []
