import tomllib
from pathlib import Path

import pytest

from common.config import MODEL_FAMILIES, ConfigError, RunConfig, parse_run_config, split_tables

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def app_defaults() -> dict:
    """The plain keys of the app's run config (the strategies' tables are server_app/settings.py's)."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    return {key: value for key, value in config.items() if not isinstance(value, dict)}


MODELS = f"allowed: {MODEL_FAMILIES}"


def test_pyproject_defaults_validate_and_match_the_model():
    cfg = parse_run_config(app_defaults())
    assert cfg == RunConfig()
    assert (cfg.dataset, cfg.partitioner, cfg.num_student_rounds, cfg.seed) == ("digits", "dirichlet", 25, 42)
    assert (cfg.model, cfg.models, cfg.max_num_examples) == ("mlp-32", "", 1_000_000)


def test_every_model_field_has_a_pyproject_default():
    aliases = {f.alias for f in RunConfig.model_fields.values()}
    assert aliases == set(app_defaults())


@pytest.mark.parametrize(
    "key, value, expected",
    [
        # ranges
        ("dirichlet-alpha", 0, "run config 'dirichlet-alpha' = 0: Input should be greater than 0"),
        ("min-replies", 1.5, "run config 'min-replies' = 1.5: Input should be less than or equal to 1"),
        ("fraction-train", 0.0, "run config 'fraction-train' = 0.0: Input should be greater than 0"),
        ("fraction-train", 1.2, "run config 'fraction-train' = 1.2: Input should be less than or equal to 1"),
        ("local-epochs", 0, "run config 'local-epochs' = 0: Input should be greater than or equal to 1"),
        ("seed", -1, "run config 'seed' = -1: Input should be greater than or equal to 0"),
        ("max-num-examples", 0, "run config 'max-num-examples' = 0: Input should be greater than or equal to 1"),
        ("public-fraction", 0.5, "run config 'public-fraction' = 0.5: Input should be less than 0.5"),
        ("round-timeout", 0, "run config 'round-timeout' = 0: Input should be greater than 0"),
        # types
        ("dp-epsilon", True, "run config 'dp-epsilon' = True: Input should be a valid number"),
        ("local-epochs", "3", "run config 'local-epochs' = '3': Input should be a valid integer"),
        ("local-epochs", 2.0, "run config 'local-epochs' = 2.0: Input should be a valid integer"),
        ("max-num-examples", 1.5, "run config 'max-num-examples' = 1.5: Input should be a valid integer"),
        ("learning-rate", "fast", "run config 'learning-rate' = 'fast': Input should be a valid number"),
        ("round-timeout", "10", "run config 'round-timeout' = '10': Input should be a valid number"),
        ("seed", True, "run config 'seed' = True: Input should be a valid integer"),
        ("model", 32, "run config 'model' = 32: Input should be a valid string"),
        (
            "output-dir",
            " ",
            "run config 'output-dir' = ' ': Value error, expected a directory path, got an empty string",
        ),
        ("num-classes", -1, "run config 'num-classes' = -1: Input should be greater than or equal to 0"),
        ("train-split", "", "run config 'train-split' = '': String should have at least 1 character"),
        ("standardise", "yes", "run config 'standardise' = 'yes': Input should be a valid boolean"),
        (
            "dataset",
            " ",
            "run config 'dataset' = ' ': Value error, expected a built-in dataset, a hub id or a path, "
            "got an empty string",
        ),
        # names from a closed list
        (
            "partitioner",
            "shards",
            "run config 'partitioner' = 'shards': Input should be 'iid', 'dirichlet', 'pathological' or 'natural'",
        ),
        # model names
        ("model", "resnet", f"run config 'model' = 'resnet': Value error, unknown model 'resnet'; {MODELS}"),
        ("model", "mlp-0", f"run config 'model' = 'mlp-0': Value error, unknown model 'mlp-0'; {MODELS}"),
        ("model", "mlp-32x", f"run config 'model' = 'mlp-32x': Value error, unknown model 'mlp-32x'; {MODELS}"),
        ("model", "MLP-32", f"run config 'model' = 'MLP-32': Value error, unknown model 'MLP-32'; {MODELS}"),
        ("models", "mlp-32,vit", f"run config 'models' = 'mlp-32,vit': Value error, unknown model 'vit'; {MODELS}"),
        (
            "models",
            "mlp-32x64;cnn",
            f"run config 'models' = 'mlp-32x64;cnn': Value error, unknown model 'mlp-32x64;cnn'; {MODELS}",
        ),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    assert str(err.value) == expected


@pytest.mark.parametrize("dataset", ["digits", "uoft-cs/cifar10", "./data/femnist", "/srv/nodes", "~/train.csv"])
def test_dataset_is_a_built_in_a_hub_id_or_a_path(dataset):
    assert parse_run_config({"dataset": dataset}).dataset == dataset


def test_the_natural_partitioner_needs_a_partition_column():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"partitioner": "natural"})
    assert str(err.value) == (
        "run config: partitioner 'natural' needs run config 'partition-column' (e.g. \"writer_id\")"
    )
    cfg = parse_run_config({"partitioner": "natural", "partition-column": "writer_id"})
    assert (cfg.partitioner, cfg.partition_column) == ("natural", "writer_id")


@pytest.mark.parametrize("name", ["cnn", "mlp-32", "mlp-128x64", "mlp-256x128x64"])
def test_registry_names_are_accepted_for_every_model_key(name):
    cfg = parse_run_config({"model": name, "models": f"{name},cnn"})
    assert (cfg.model, cfg.models) == (name, f"{name},cnn")


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"num-rounds": 3})
    assert (
        str(err.value)
        == f"unknown run config key 'num-rounds' (value 3); known keys: {', '.join(sorted(app_defaults()))}"
    )


def test_several_errors_are_reported_together():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"min-replies": 2.0, "local-epochs": 0})
    assert str(err.value) == (
        "run config 'min-replies' = 2.0: Input should be less than or equal to 1; "
        "run config 'local-epochs' = 0: Input should be greater than or equal to 1"
    )


def test_strategy_tables_are_left_to_the_server_and_split_off_by_their_prefix():
    assert split_tables({"seed": 1, "fedprox.proximal-mu": 0.1, "two-stage.alpha": 0.3}) == (
        {"seed": 1},
        {"fedprox": {"proximal-mu": 0.1}, "two-stage": {"alpha": 0.3}},
    )
    # A node reads the common keys only: a table it does not know is no error for it.
    assert parse_run_config({"seed": 1, "fedprox.proximal-mu": 0.1, "no-such.key": 1}).seed == 1


@pytest.mark.parametrize(
    "node_config, expected",
    [
        ({"model": "cnn"}, "cnn"),
        ({"model": "cnn", "partition-id": 0}, "cnn"),
        ({"partition-id": 3}, "mlp-64"),
        ({"partition-id": 4}, "cnn"),
        ({}, "mlp-32"),
    ],
)
def test_node_model_prefers_the_node_config_then_models_then_model(node_config, expected):
    assert parse_run_config({"models": "cnn,mlp-64"}).node_model(node_config) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("transformer", f"node config 'model' = 'transformer': unknown model 'transformer'; {MODELS}"),
        ("", f"node config 'model' = '': unknown model ''; {MODELS}"),
        (5, f"node config 'model' = '5': unknown model '5'; {MODELS}"),
    ],
)
def test_unknown_node_model_names_the_node_config(name, expected):
    with pytest.raises(ConfigError) as err:
        RunConfig().node_model({"model": name})
    assert str(err.value) == expected


def test_more_clients_than_nodes_is_refused():
    cfg = parse_run_config({"min-train-nodes": 12})
    with pytest.raises(ConfigError) as err:
        cfg.check_nodes(10)
    assert str(err.value) == "run config 'min-train-nodes' = 12 is more than the 10 connected nodes; allowed: 1 to 10"
    cfg.check_nodes(12)


def test_integers_are_accepted_for_floats_and_output_dir_is_made_absolute(tmp_path):
    cfg = parse_run_config({"learning-rate": 1, "round-timeout": 2, "output-dir": str(tmp_path / "o")})
    assert cfg.learning_rate == 1.0 and cfg.round_timeout == 2.0
    assert cfg.output_path() == tmp_path / "o"
    assert parse_run_config({"output-dir": "rel"}).output_path().is_absolute()


def test_dumped_config_validates_again():
    cfg = parse_run_config({"model": "mlp-256x128x64", "models": "cnn,mlp-16", "learning-rate": 0.7})
    dumped = cfg.model_dump(mode="json", by_alias=True)
    assert (dumped["model"], dumped["models"]) == ("mlp-256x128x64", "cnn,mlp-16")
    assert parse_run_config(dumped) == cfg


def test_a_nodes_model_comes_from_node_config_then_the_partition_mapping_then_the_default():
    cfg = parse_run_config({"models": "mlp-32, cnn ,mlp-64x64"})
    assert [cfg.node_model({"partition-id": i}) for i in range(4)] == ["mlp-32", "cnn", "mlp-64x64", "mlp-32"]
    assert cfg.node_model({"partition-id": 1, "model": "mlp-8"}) == "mlp-8"
    assert parse_run_config({}).node_model({"partition-id": 1}) == "mlp-32"
    with pytest.raises(ConfigError, match=r"node config 'model' = 'big': unknown model 'big'; allowed: mlp-<width>"):
        cfg.node_model({"model": "big"})
