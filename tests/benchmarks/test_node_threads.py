"""The node-threads benchmark's pure parts: the order of its runs and its medians and ratios."""

import pytest

from benchmarks.node_threads import medians, schedule


def test_schedule_alternates_which_setting_runs_first():
    assert schedule((1, 2), 3) == [(0, 1), (0, 2), (1, 2), (1, 1), (2, 1), (2, 2)]


def test_schedule_runs_each_setting_once_per_repeat():
    order = schedule((1, 2, 4), 4)
    for repeat in range(4):
        assert sorted(t for r, t in order if r == repeat) == [1, 2, 4]


def run(threads, rounds, clients):
    return {"threads": threads, "round_seconds": rounds, "client_seconds": clients}


def test_medians_pool_every_round_of_a_setting_and_divide_by_the_baseline():
    runs = [
        run(1, [10.0, 30.0], [8.0, 9.0]),
        run(2, [6.0, 7.0], [4.0, 5.0]),
        run(2, [5.0], [3.0]),
        run(1, [20.0], [7.0]),
    ]
    one, two = medians(runs, baseline=1)
    assert (one["threads"], one["round_seconds"], one["client_seconds"]) == (1, 20.0, 8.0)
    assert (one["round_ratio"], one["client_ratio"]) == (1.0, 1.0)
    assert (two["threads"], two["round_seconds"], two["client_seconds"]) == (2, 6.0, 4.0)
    assert two["round_ratio"] == pytest.approx(0.3) and two["client_ratio"] == pytest.approx(0.5)
