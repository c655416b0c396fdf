"""The published setups in benchmarks/published/: each file, read as `flwr run --run-config <file>` reads it, passes
the ServerApp's validation on top of pyproject.toml's defaults and holds the values that define its setup, and the
README there gives its command. A renamed or misspelt key fails here, as it would fail the run."""

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, parse_config_args

from server_app.settings import parse

PROJECT = Path(__file__).resolve().parents[2]
PUBLISHED = PROJECT / "benchmarks" / "published"

FEDDF = {
    "strategy": "feddf",
    "dataset": "uoft-cs/cifar10",
    "input_column": "img",
    "model": "resnet-8",
    "partitioner": "dirichlet",
    "public_dataset": "uoft-cs/cifar100",
    "public_split": "train",
    "fraction_train": 0.4,
    "local_epochs": 40,
    "num_student_rounds": 100,
}
# What defines each setup, as RunConfig fields after validation.
SETUPS = {
    "feddf-cifar10-resnet8-alpha1.toml": {**FEDDF, "dirichlet_alpha": 1.0},
    "feddf-cifar10-resnet8-alpha0.1.toml": {**FEDDF, "dirichlet_alpha": 0.1},
    "fedgen-mnist-cnn-alpha0.1.toml": {
        "strategy": "fedgen",
        "dataset": "ylecun/mnist",
        "input_column": "image",
        "model": "cnn",
        "partitioner": "dirichlet",
        "dirichlet_alpha": 0.1,
        "public_dataset": "",
        "fraction_train": 0.5,
        "num_student_rounds": 200,
    },
}


def defaults() -> dict:
    """pyproject.toml's run config, its strategy tables flattened to `table.key` as Flower flattens them."""
    with open(PROJECT / "pyproject.toml", "rb") as file:
        return flatten_dict(tomllib.load(file)["tool"]["flwr"]["app"]["config"])


def test_every_published_file_is_checked():
    assert sorted(p.name for p in PUBLISHED.glob("*.toml")) == sorted(SETUPS)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_published_setup_is_a_valid_run_config(name):
    base = defaults()
    overrides = parse_config_args([str(PUBLISHED / name)])
    # Flower refuses an override of a key the app does not declare; parse would report it too, by another message.
    assert set(overrides) <= set(base), set(overrides) - set(base)
    cfg, _ = parse({**base, **overrides})
    assert {field: getattr(cfg, field) for field in SETUPS[name]} == SETUPS[name]


def test_feddf_server_distillation_follows_the_authors_code():
    """10,000 steps at most, a stop after 1,000 without improvement (100 validations 10 steps apart), temperature 1."""
    for name in ("feddf-cifar10-resnet8-alpha1.toml", "feddf-cifar10-resnet8-alpha0.1.toml"):
        _, settings = parse({**defaults(), **parse_config_args([str(PUBLISHED / name)])})
        assert (settings.distill_steps, settings.distill_patience, settings.temperature) == (10000, 100, 1.0)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_readme_gives_the_command(name):
    readme = (PUBLISHED / "README.md").read_text()
    assert f"--run-config benchmarks/published/{name} " in readme
