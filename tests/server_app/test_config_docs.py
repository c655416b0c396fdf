"""docs/configuration.md is generated from RunConfig; it, the model and pyproject.toml must agree."""

from pathlib import Path

import pytest
import tomllib

from common.config import RunConfig
from common.config_docs import COMMAND, DOC_PATH, allowed_values, render

ROOT = Path(__file__).resolve().parents[2]
FIELDS = RunConfig.model_fields


def app_defaults() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_the_committed_page_is_what_the_generator_writes():
    assert DOC_PATH == ROOT / "docs" / "configuration.md"
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else "(missing)"
    assert committed == render(), f"docs/configuration.md is stale; regenerate it with `{COMMAND}`"


def test_the_page_has_one_row_per_key_in_field_order():
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [f.alias for f in FIELDS.values()]


def test_pyproject_has_exactly_the_model_keys():
    assert set(app_defaults()) == {f.alias for f in FIELDS.values()}


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
    assert allowed_values(FIELDS["logits_dtype"]) == '`"float32"`, `"float16"`'
    assert allowed_values(FIELDS["local_test_fraction"]) == "number in (0, 1)"
    assert allowed_values(FIELDS["fraction_train"]) == "number in (0, 1]"
    assert allowed_values(FIELDS["alpha"]) == "number in [0, 1]"
    assert allowed_values(FIELDS["temperature"]) == "number > 0"
    assert allowed_values(FIELDS["seed"]) == "integer ≥ 0"
    assert allowed_values(FIELDS["ensemble_teacher"]) == "`true`, `false`"
    assert allowed_values(FIELDS["min_train_nodes"]) == "integer ≥ 1, at most the number of connected nodes"
