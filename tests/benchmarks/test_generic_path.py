"""The generic-path benchmark's pure helpers: run configs, ratios of resnet-8 to cnn, means over seeds."""

from types import SimpleNamespace

import pytest

from benchmarks.generic_path import means, pairs, phase_medians, run_config

SIZES = {"supernodes": 5, "fraction_train": 0.6, "rounds": 2, "local_epochs": 2, "actors": 2}


def row(strategy: str, seed: int, model: str, accuracy: float, seconds: float) -> dict:
    return {
        "strategy": strategy,
        "alpha": 0.5,
        "seed": seed,
        "model": model,
        "accuracy": accuracy,
        "median_round_s": seconds,
    }


def test_two_stage_trains_a_teacher_of_the_runs_own_model_for_as_many_rounds():
    config = run_config("/tmp/m.parquet", "resnet-8", "two-stage", 0.1, 43, SIZES)
    assert config["two-stage.teacher-model"] == "resnet-8"
    assert config["two-stage.num-teacher-rounds"] == config["num-student-rounds"] == 2
    assert config["dirichlet-alpha"] == 0.1 and config["seed"] == 43 and config["dataset"] == "/tmp/m.parquet"
    assert config["local-epochs"] == 2 and config["fraction-train"] == 0.6 and config["fraction-evaluate"] == 0.0
    # Other strategies get no two-stage key: a strategy's table set for another strategy is refused.
    assert not any(k.startswith("two-stage.") for k in run_config("d", "cnn", "fedavg", 0.5, 42, SIZES))


def test_pairs_divide_resnet_8_by_cnn_of_the_same_strategy_and_seed():
    rows = [
        row("fedavg", 42, "cnn", 0.8, 2.0),
        row("fedavg", 42, "resnet-8", 0.6, 10.0),
        row("fedavg", 43, "resnet-8", 0.4, 8.0),
        row("fedavg", 43, "cnn", 0.5, 1.0),
        row("feddf", 42, "cnn", 0.9, 4.0),  # no resnet-8 run yet: no pair
    ]
    paired = pairs(rows)
    assert [(p["strategy"], p["seed"]) for p in paired] == [("fedavg", 42), ("fedavg", 43)]
    assert paired[0]["accuracy_ratio"] == pytest.approx(0.75) and paired[0]["time_ratio"] == pytest.approx(5.0)
    assert paired[1]["accuracy_ratio"] == pytest.approx(0.8) and paired[1]["time_ratio"] == pytest.approx(8.0)
    assert paired[1]["accuracy"] == {"cnn": 0.5, "resnet-8": 0.4}
    [mean] = means(paired)
    assert mean["seeds"] == 2
    assert mean["accuracy"] == pytest.approx({"cnn": 0.65, "resnet-8": 0.5})
    assert mean["median_round_s"] == pytest.approx({"cnn": 1.5, "resnet-8": 9.0})
    # The mean of the seeds' ratios, not the ratio of the means.
    assert mean["accuracy_ratio"] == pytest.approx(0.775) and mean["time_ratio"] == pytest.approx(6.5)


def test_phase_medians_keep_the_phases_apart():
    # phase_medians reads a record's phase and seconds alone.
    history = [
        SimpleNamespace(phase=p, seconds=s)
        for p, s in [("teacher", 1.0), ("teacher", 3.0), ("student", 5.0), ("student", 9.0)]
    ]
    assert phase_medians(history) == {"teacher": 2.0, "student": 7.0}
