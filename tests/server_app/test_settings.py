"""server_app.settings: the run config's common keys and its strategy's table, every misplaced key refused by name."""

import tomllib
from pathlib import Path

import pytest

from common.config import ConfigError, RunConfig
from server_app.settings import config_dump, parse
from server_app.strategies import STRATEGIES
from server_app.strategies.fedavgm import FedAvgMSettings
from server_app.strategies.fedprox import FedProxSettings
from server_app.strategies.two_stage import TwoStageSettings

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def refusal(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse(raw)
    return str(err.value)


def test_the_strategys_table_is_parsed_into_its_settings():
    cfg, settings = parse({"strategy": "fedprox", "fedprox.proximal-mu": 0.1, "seed": 3})
    assert (cfg.strategy, cfg.seed) == ("fedprox", 3)
    assert settings == FedProxSettings(proximal_mu=0.1)
    cfg, settings = parse({"strategy": "fedavgm", "fedavgm.server-momentum": 0.5, "fedavgm.server-learning-rate": 2.0})
    assert settings == FedAvgMSettings(server_learning_rate=2.0, server_momentum=0.5)
    # A table left out: the strategy's defaults.
    assert parse({"strategy": "two-stage"})[1] == TwoStageSettings()
    assert parse({"strategy": "two-stage"})[1].num_teacher_rounds == 25


def test_a_wrong_value_in_the_table_is_named_with_the_table():
    assert refusal({"strategy": "fedprox", "fedprox.proximal-mu": -1.0}) == (
        "run config 'fedprox.proximal-mu' = -1.0: Input should be greater than or equal to 0"
    )
    assert refusal({"strategy": "fedavgm", "fedavgm.server-momentum": 1.0}) == (
        "run config 'fedavgm.server-momentum' = 1.0: Input should be less than 1"
    )


def test_every_wrong_key_of_the_table_is_named_at_once():
    assert refusal({"strategy": "fedprox", "fedprox.proximal-mu": "x", "fedprox.mu": 1}) == (
        "run config 'fedprox.proximal-mu' = 'x': Input should be a valid number; "
        "unknown run config key 'fedprox.mu' (value 1); known keys: fedprox.proximal-mu"
    )


def test_a_strategy_setting_written_as_a_plain_key_is_refused_naming_where_it_belongs():
    assert refusal({"strategy": "fedprox", "proximal-mu": 0.1}) == (
        "run config 'proximal-mu' is a strategy's setting, not a common key: write it 'fedprox.proximal-mu'"
    )
    # A key several strategies have: each of its places.
    assert refusal({"strategy": "fedavg", "temperature": 3.0}) == (
        "run config 'temperature' is a strategy's setting, not a common key: write it 'feddf.temperature' or "
        "'feddf-datafree.temperature' or 'fedmd.temperature' or 'two-stage.temperature'"
    )


def test_a_changed_value_in_another_strategys_table_is_refused():
    assert refusal({"strategy": "fedavg", "fedprox.proximal-mu": 0.1}) == (
        "run config 'fedprox.proximal-mu' = 0.1 is a setting of strategy 'fedprox', and this run's strategy is "
        "'fedavg', which does not read it; allowed: its default 0.01, or `strategy = 'fedprox'`"
    )
    # Its default, as Flower fills every table in: nothing to refuse.
    assert parse({"strategy": "fedavg", "fedprox.proximal-mu": 0.01})[0].strategy == "fedavg"
    # A wrong value there is refused as in its own strategy's run.
    assert refusal({"strategy": "fedavg", "fedprox.proximal-mu": -1.0}) == (
        "run config 'fedprox.proximal-mu' = -1.0: Input should be greater than or equal to 0"
    )


def test_a_table_that_names_no_strategy_is_refused():
    assert refusal({"strategy": "fedavg", "fedsgd.lr": 0.01}) == (
        "run config table 'fedsgd' (key 'fedsgd.lr') names no strategy; allowed: "
        + ", ".join(repr(name) for name in STRATEGIES)
    )


def test_a_strategys_own_refusal_comes_from_parse():
    assert refusal({"strategy": "fedgen", "dp-epsilon": 3.0}).startswith(
        "run config 'dp-epsilon' = 3.0: strategy 'fedgen' reports each node's label counts in the clear"
    )


def test_the_config_dump_is_the_common_keys_then_the_strategys_table():
    cfg, settings = parse({"strategy": "fedprox", "fedprox.proximal-mu": 0.1, "seed": 3})
    dump = config_dump(cfg, settings)
    common = [field.alias for field in RunConfig.model_fields.values()]
    assert list(dump) == [*common, "fedprox.proximal-mu"]
    assert (dump["strategy"], dump["seed"], dump["fedprox.proximal-mu"]) == ("fedprox", 3, 0.1)
    assert list(config_dump(*parse({"strategy": "fedavg"}))) == common
    two_stage = config_dump(*parse({"strategy": "two-stage", "two-stage.teacher-model": "cnn"}))
    assert [k for k in two_stage if "." in k] == [
        f"two-stage.{f.alias}" for f in TwoStageSettings.model_fields.values()
    ]
    assert two_stage["two-stage.teacher-model"] == "cnn"


def test_the_dump_parses_back_to_the_same_settings():
    cfg, settings = parse({"strategy": "fedadam", "fedadam.tau": 0.01, "local-epochs": 2})
    assert parse(config_dump(cfg, settings)) == (cfg, settings)


def flattened(config: dict) -> dict:
    """pyproject's run config as Flower hands it over: tables flattened to dotted keys."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_pyprojects_run_config_with_every_table_serves_every_strategy_with_its_defaults(name):
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    cfg, settings = parse({**flattened(config), "strategy": name})
    assert cfg.strategy == name and settings == STRATEGIES[name].Settings()


def test_every_named_model_is_built_on_the_task_before_round_1():
    cfg, _ = parse({"strategy": "fedavg", "dataset": "mnist5k", "model": "resnet-8", "models": "cnn,shufflenet-v2"})
    assert (cfg.model, cfg.models) == ("resnet-8", "cnn,shufflenet-v2")
    with pytest.raises(ConfigError) as err:
        parse({"dataset": "synthetic", "two-stage.teacher-model": "resnet-8"})
    assert str(err.value) == (
        "run config 'two-stage.teacher-model' = 'resnet-8': model 'resnet-8' needs image inputs; "
        "the task has inputs of shape (32,), use an mlp-..."
    )
    with pytest.raises(ConfigError, match=r"^run config 'models' = 'tests.common.model_factories:absent': model "):
        parse({"strategy": "fedavg", "models": "mlp-32,tests.common.model_factories:absent"})


def test_a_batch_norm_model_is_refused_under_dp_naming_the_key():
    with pytest.raises(ConfigError) as err:
        parse({"strategy": "fedavg", "dataset": "mnist5k", "model": "resnet-8", "dp-epsilon": 3.0})
    assert str(err.value).startswith(
        "run config 'model' = 'resnet-8' with 'dp-epsilon' = 3.0: it has batch norm or other trainable layers"
    )
    assert parse({"strategy": "fedavg", "model": "cnn", "dp-epsilon": 3.0})[0].model == "cnn"
