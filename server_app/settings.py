"""The ServerApp's reading of the run config: its common keys (common/config.py) and the settings of the strategy it
names, from that strategy's table. Every key is checked before round 1, and a key in the wrong place is refused by
name, saying where it belongs."""

from collections.abc import Mapping
from typing import Any

from common.config import (
    ConfigError,
    RunConfig,
    Settings,
    model_cycle,
    parse_run_config,
    split_tables,
    validate_settings,
)
from common.data import builtin_task, is_builtin
from common.models import build_model, dp_compatible
from common.task import Task
from server_app.strategies import STRATEGIES


def _aliases(model: type[Settings]) -> dict[str, str]:
    """Run-config key -> field name of a settings model."""
    return {field.alias or name: name for name, field in model.model_fields.items()}


def _owners(key: str) -> list[str]:
    """The strategies whose settings have `key`."""
    return [name for name, cls in STRATEGIES.items() if key in _aliases(cls.Settings)]


def _check_plain_keys(plain: Mapping[str, Any]) -> None:
    """A strategy's setting written as a plain key is refused, naming the key it should be."""
    common = _aliases(RunConfig)
    for key in plain:
        if key not in common and (owners := _owners(key)):
            where = " or ".join(f"'{owner}.{key}'" for owner in owners)
            raise ConfigError(f"run config '{key}' is a strategy's setting, not a common key: write it {where}")


def _check_other_tables(strategy: str, tables: Mapping[str, Mapping[str, Any]]) -> None:
    """Every table names a registered strategy and only its keys; a value set in another strategy's table than the
    run's is refused, since nothing would read it (Flower fills every table with its defaults, so only changed
    values can be told apart)."""
    for table, keys in tables.items():
        if table not in STRATEGIES:
            raise ConfigError(
                f"run config table '{table}' (key '{table}.{next(iter(keys))}') names no strategy; "
                f"allowed: {', '.join(map(repr, STRATEGIES))}"
            )
        settings = validate_settings(STRATEGIES[table].Settings, keys, table=table)
        if table == strategy:
            continue
        defaults = STRATEGIES[table].Settings()
        for key, name in _aliases(STRATEGIES[table].Settings).items():
            if getattr(settings, name) != getattr(defaults, name):
                raise ConfigError(
                    f"run config '{table}.{key}' = {keys[key]!r} is a setting of strategy '{table}', and this run's "
                    f"strategy is '{strategy}', which does not read it; allowed: its default "
                    f"{getattr(defaults, name)!r}, or `strategy = '{table}'`"
                )


def check_models(cfg: RunConfig, settings: Settings, task: Task) -> None:
    """Every architecture the run config names is built once on the task (a user's factory imported and run on a
    batch); under DP, one Opacus cannot train (batch norm) is refused. Named by its key, before round 1."""
    named = [("model", cfg.model), *(("models", name) for name in model_cycle(cfg.models))]
    teacher = STRATEGIES[cfg.strategy](cfg, settings, None, task).teacher_model()
    if teacher:
        named.append((f"{cfg.strategy}.teacher-model", teacher))
    for key, name in named:
        try:
            model = build_model(name, task)
        except ValueError as exc:
            raise ConfigError(f"run config '{key}' = {name!r}: {exc}") from None
        if cfg.dp_epsilon > 0 and (reason := dp_compatible(model)):
            raise ConfigError(f"run config '{key}' = {name!r} with 'dp-epsilon' = {cfg.dp_epsilon}: {reason}")


def parse(raw: Mapping[str, Any]) -> tuple[RunConfig, Settings]:
    """The run config's common keys and its strategy's settings; a ConfigError naming every wrong key."""
    plain, tables = split_tables(raw)
    _check_plain_keys(plain)
    cfg = parse_run_config(raw, strategies=STRATEGIES)
    _check_other_tables(cfg.strategy, tables)
    settings = validate_settings(STRATEGIES[cfg.strategy].Settings, tables.get(cfg.strategy, {}), table=cfg.strategy)
    STRATEGIES[cfg.strategy].check_config(cfg, settings)
    if is_builtin(cfg.dataset):  # the task is known now; other data defines it once loaded (server_app/task.py)
        check_models(cfg, settings, builtin_task(cfg.dataset))
    return cfg, settings


def config_dump(cfg: RunConfig, settings: Settings) -> dict[str, Any]:
    """The run config as summary.json and checkpoints keep it: the common keys, then the strategy's settings under
    their run-config names (`fedprox.proximal-mu`)."""
    own = settings.model_dump(mode="json", by_alias=True)
    return {**cfg.model_dump(mode="json", by_alias=True), **{f"{cfg.strategy}.{k}": v for k, v in own.items()}}
