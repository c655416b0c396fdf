"""docs/configuration.md is generated from RunConfig and the strategies' settings; they and pyproject.toml agree."""

import tomllib
from pathlib import Path

import pytest

from common.config import RunConfig, toml_value
from server_app.config_docs import COMMAND, DOC_PATH, allowed_values, render
from server_app.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]
FIELDS = RunConfig.model_fields


def app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def app_defaults() -> dict:
    """The plain (common) keys of pyproject.toml's run config."""
    return {key: value for key, value in app_config().items() if not isinstance(value, dict)}


# Every settings model with its run-config prefix: the common keys, then each strategy's table.
MODELS = [(RunConfig, ""), *((cls.Settings, f"{name}.") for name, cls in STRATEGIES.items())]
ALL_FIELDS = [(prefix, field) for model, prefix in MODELS for field in model.model_fields.values()]


def test_the_committed_page_is_what_the_generator_writes():
    assert DOC_PATH == ROOT / "docs" / "configuration.md"
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else "(missing)"
    assert committed == render(), f"docs/configuration.md is stale; regenerate it with `{COMMAND}`"


def test_the_page_has_one_row_per_key_in_field_order():
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [prefix + f.alias for prefix, f in ALL_FIELDS]


def pyproject_table(name: str) -> str:
    """A strategy's table as pyproject.toml must hold it: Flower accepts a `--run-config` key only if it is there."""
    fields = STRATEGIES[name].Settings.model_fields.values()
    return f"[tool.flwr.app.config.{name}]\n" + "".join(f"{f.alias} = {toml_value(f.default)}\n" for f in fields)


def test_pyproject_has_exactly_the_model_keys_and_one_table_per_strategy_with_settings():
    assert set(app_defaults()) == {f.alias for f in FIELDS.values()}
    tables = {name: keys for name, keys in app_config().items() if isinstance(keys, dict)}
    wanted = {name for name, cls in STRATEGIES.items() if cls.Settings.model_fields}
    assert set(tables) <= wanted, f"tables of no strategy's settings: {sorted(set(tables) - wanted)}"
    missing = "\n".join(pyproject_table(name) for name in sorted(wanted - set(tables)))
    assert not missing, f"add to pyproject.toml, after [tool.flwr.app.config]:\n{missing}"
    for name, keys in tables.items():
        want = {f.alias for f in STRATEGIES[name].Settings.model_fields.values()}
        assert set(keys) == want, f"pyproject.toml's table should read:\n{pyproject_table(name)}"


@pytest.mark.parametrize("name", [name for name, cls in STRATEGIES.items() if cls.Settings.model_fields])
def test_every_strategy_setting_default_equals_pyproject(name):
    table = app_config()[name]
    for field in STRATEGIES[name].Settings.model_fields.values():
        value = table[field.alias]
        assert (type(value), value) == (type(field.default), field.default), f"{name}.{field.alias}"
        assert (field.description or "").strip(), f"'{name}.{field.alias}' has no description"


@pytest.mark.parametrize("name", list(FIELDS))
def test_model_default_equals_pyproject(name):
    field, defaults = FIELDS[name], app_defaults()
    assert field.alias in defaults, f"pyproject.toml has no default for '{field.alias}'"
    # The type too: `600` in pyproject.toml for a float default of 600.0 would read differently in the docs.
    value = defaults[field.alias]
    assert (type(value), value) == (type(field.default), field.default), (
        f"'{field.alias}': pyproject.toml says {value!r}, common/config.py says {field.default!r}"
    )


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_has_a_description(name):
    assert (FIELDS[name].description or "").strip(), f"'{FIELDS[name].alias}' has no description in common/config.py"


def test_allowed_values_come_from_types_and_bounds():
    two_stage = STRATEGIES["two-stage"].Settings.model_fields
    assert allowed_values(two_stage["logits_dtype"]) == '`"float32"`, `"float16"`'
    assert allowed_values(FIELDS["local_test_fraction"]) == "number in (0, 1)"
    assert allowed_values(FIELDS["fraction_train"]) == "number in (0, 1]"
    assert allowed_values(two_stage["alpha"]) == "number in [0, 1]"
    assert allowed_values(two_stage["temperature"]) == "number > 0"
    assert allowed_values(FIELDS["seed"]) == "integer ≥ 0"
    assert allowed_values(two_stage["ensemble_teacher"]) == "`true`, `false`"
    assert allowed_values(FIELDS["min_train_nodes"]) == "integer ≥ 1, at most the number of connected nodes"
