"""checkpoint.load refuses a checkpoint of another model or config, and a damaged file, by name."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from common.config import ConfigError
from server_app import checkpoint
from server_app.records import read_history
from server_app.settings import config_dump, parse

RAW = {"two-stage.teacher-model": "mlp-128x64", "local-epochs": 2}


def dumped(raw: dict) -> dict:
    """The run config as the ServerApp dumps it into a checkpoint: common keys, then the strategy's table."""
    return config_dump(*parse(raw))


CONFIG = dumped(RAW)
# A history as the round loop writes it: cut in half, its checkpoint fails otherwise than a toy one's.
HISTORY_JSON = Path(__file__).parent / "fixtures" / "history.json"
HISTORY = read_history(HISTORY_JSON)
ONLY = "only ['min-replies', 'output-dir', 'resume-from', 'round-timeout'] may change"


@pytest.fixture
def run_dir(tmp_path):
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    checkpoint.save(
        tmp_path,
        checkpoint.Checkpoint(
            "teacher",
            3,
            HISTORY,
            {"teacher": arrays},
            random.Random(1).getstate(),
            CONFIG,
            {"generator": arrays},
        ),
    )
    return tmp_path


def refusal(run_dir, **changes) -> str:
    with pytest.raises(ConfigError) as err:
        checkpoint.load(run_dir, dumped({**RAW, **changes}))
    return str(err.value)


def test_the_same_config_resumes_and_resumable_keys_may_change(run_dir, tmp_path_factory):
    other = dumped(
        {
            **RAW,
            "output-dir": str(tmp_path_factory.mktemp("out")),
            "round-timeout": 5,
            "min-replies": 1.0,
            "resume-from": str(run_dir),
        }
    )
    loaded = checkpoint.load(run_dir, other)
    assert (loaded.phase, loaded.server_round, loaded.history) == ("teacher", 3, HISTORY)
    assert loaded.config == CONFIG and CONFIG["two-stage.teacher-model"] == "mlp-128x64"
    assert np.array_equal(loaded.strategy_state["generator"]["w"].numpy(), np.arange(6).reshape(2, 3))
    assert loaded.globals["teacher"]["w"].numpy().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_crash_between_checkpoint_and_history_loses_no_round(run_dir):
    """The server writes the checkpoint first; history.json one round behind is restored from it, byte for byte."""
    from server_app.outputs import RunDirectory

    (run_dir / "history.json").write_text(json.dumps(json.loads(HISTORY_JSON.read_text())[:-1]))
    RunDirectory.reopen(run_dir, checkpoint.load(run_dir, CONFIG).history)
    assert (run_dir / "history.json").read_text() == HISTORY_JSON.read_text()


def test_a_checkpoint_of_another_model_is_refused(run_dir):
    assert refusal(run_dir, **{"two-stage.teacher-model": "cnn"}) == (
        f"run config 'resume-from' = {str(run_dir)!r} was made with another config: "
        f"'two-stage.teacher-model' = 'cnn' (checkpoint: 'mlp-128x64'); {ONLY}"
    )


def test_a_checkpoint_of_another_strategy_is_refused_naming_the_settings_of_both(run_dir):
    # fedprox has its own table: its setting is new, two-stage's are gone.
    message = refusal(run_dir, strategy="fedprox", **{"two-stage.teacher-model": "mlp-128x64"})
    assert message.startswith(
        f"run config 'resume-from' = {str(run_dir)!r} was made with another config: "
        "'fedprox.proximal-mu' = 0.01 (checkpoint: None), 'strategy' = 'fedprox' (checkpoint: 'two-stage'), "
        "'two-stage.alpha' = None (checkpoint: 0.5), "
    )
    assert message.endswith(f"; {ONLY}")


def test_a_checkpoint_of_another_config_is_refused_naming_every_difference(run_dir):
    assert refusal(run_dir, **{"local-epochs": 5}) == (
        f"run config 'resume-from' = {str(run_dir)!r} was made with another config: "
        f"'local-epochs' = 5 (checkpoint: 2); {ONLY}"
    )
    assert refusal(run_dir, **{"local-epochs": 5, "two-stage.teacher-model": "mlp-64"}) == (
        f"run config 'resume-from' = {str(run_dir)!r} was made with another config: "
        f"'local-epochs' = 5 (checkpoint: 2), 'two-stage.teacher-model' = 'mlp-64' (checkpoint: 'mlp-128x64'); "
        f"{ONLY}"
    )


def test_a_directory_without_a_checkpoint_is_refused(tmp_path):
    assert refusal(tmp_path) == (
        f"run config 'resume-from' = {str(tmp_path)!r}: no checkpoint.pt there; allowed: a fedkd run directory"
    )


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        lambda path: path.write_bytes(b""),
        lambda path: path.write_text("not a checkpoint"),
        lambda path: torch.save([1, 2, 3], path),
    ],
    ids=["truncated", "empty", "text", "another-torch-file"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(run_dir, damage):
    path = run_dir / "checkpoint.pt"
    damage(path)
    assert refusal(run_dir) == (
        f"run config 'resume-from' = {str(run_dir)!r}: {str(path)!r} cannot be read as a fedkd checkpoint "
        "(truncated, or another kind of file); allowed: a fedkd run directory with an intact checkpoint.pt"
    )
