import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, RunConfig, parse_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def app_defaults() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_validate_and_match_the_model():
    cfg = parse_run_config(app_defaults())
    assert cfg == RunConfig()
    assert (cfg.dataset, cfg.partitioner, cfg.num_teacher_rounds, cfg.seed) == ("digits", "dirichlet", 25, 42)
    assert cfg.teacher_hidden == (128, 64) and cfg.student_hidden == (32,)


def test_every_model_field_has_a_pyproject_default():
    aliases = {f.alias for f in RunConfig.model_fields.values()}
    assert aliases == set(app_defaults())


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("alpha", 1.5, "run config 'alpha' = 1.5: Input should be less than or equal to 1"),
        ("alpha", -0.1, "run config 'alpha' = -0.1: Input should be greater than or equal to 0"),
        ("temperature", 0.0, "run config 'temperature' = 0.0: Input should be greater than 0"),
        ("temperature", -2, "run config 'temperature' = -2: Input should be greater than 0"),
        ("fraction-train", 0.0, "run config 'fraction-train' = 0.0: Input should be greater than 0"),
        ("fraction-train", 1.2, "run config 'fraction-train' = 1.2: Input should be less than or equal to 1"),
        ("local-epochs", "3", "run config 'local-epochs' = '3': Input should be a valid integer"),
        ("local-epochs", 0, "run config 'local-epochs' = 0: Input should be greater than or equal to 1"),
        ("learning-rate", "fast", "run config 'learning-rate' = 'fast': Input should be a valid number"),
        ("dataset", "cifar10", "run config 'dataset' = 'cifar10': Input should be 'digits' or 'synthetic'"),
        ("strategy", "fedprox", "run config 'strategy' = 'fedprox': Input should be 'two-stage'"),
        ("partitioner", "shards", "run config 'partitioner' = 'shards': Input should be 'iid', 'dirichlet' or 'pathological'"),
        ("teacher-hidden", "128,x", "run config 'teacher-hidden' = '128,x': Value error, expected comma-separated positive integers"),
        ("student-hidden", "0", "run config 'student-hidden' = '0': Value error, expected comma-separated positive integers"),
        ("seed", True, "run config 'seed' = True: Input should be a valid integer"),
        ("output-dir", " ", "run config 'output-dir' = ' ': Value error, expected a directory path"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    assert expected in str(err.value)


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"num-rounds": 3})
    message = str(err.value)
    assert "unknown run config key 'num-rounds' (value 3)" in message
    assert "num-teacher-rounds" in message and "num-student-rounds" in message


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"alpha": 2.0, "temperature": 0})
    assert "'alpha'" in str(err.value) and "'temperature'" in str(err.value)


def test_more_clients_than_nodes_is_refused():
    cfg = parse_run_config({"min-train-nodes": 12})
    with pytest.raises(ConfigError, match=r"'min-train-nodes' = 12 is more than the 10 connected nodes; allowed: 1 to 10"):
        cfg.check_nodes(10)
    cfg.check_nodes(12)


def test_integers_are_accepted_for_floats_and_output_dir_is_made_absolute(tmp_path):
    cfg = parse_run_config({"alpha": 1, "temperature": 2, "output-dir": str(tmp_path / "o")})
    assert cfg.alpha == 1.0 and cfg.temperature == 2.0
    assert cfg.output_path() == tmp_path / "o"
    assert parse_run_config({"output-dir": "rel"}).output_path().is_absolute()


def test_dumped_config_validates_again():
    cfg = parse_run_config({"teacher-hidden": "256,128,64", "alpha": 0.7})
    dumped = cfg.model_dump(mode="json", by_alias=True)
    assert dumped["teacher-hidden"] == "256,128,64"
    assert parse_run_config(dumped) == cfg
