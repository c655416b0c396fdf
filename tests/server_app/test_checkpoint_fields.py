"""A checkpoint with a missing or mistyped field is refused with a clear error, not a raw KeyError or TypeError."""

import pytest
import torch

from common.config import ConfigError
from server_app.checkpoint import CHECKPOINT, load

CONFIG = {"seed": 42}
GOOD = {"phase": "student", "round": 2, "history": [], "globals": {}, "sampler_state": (3, (1, 2), None)}


@pytest.mark.parametrize(
    "broken, field",
    [
        ({k: v for k, v in GOOD.items() if k != "phase"}, "field 'phase' is NoneType, expected str"),
        ({**GOOD, "round": "2"}, "field 'round' is str, expected int"),
        ({**GOOD, "globals": [1]}, "field 'globals' is list, expected dict"),
        ({**GOOD, "history": "lots"}, "ValidationError"),
    ],
)
def test_a_checkpoint_missing_or_mistyping_a_field_is_refused_naming_it(tmp_path, broken, field):
    torch.save({**broken, "strategy_state": {}, "config": CONFIG}, tmp_path / CHECKPOINT)
    with pytest.raises(ConfigError, match="is not a complete fedkd checkpoint") as refused:
        load(tmp_path, CONFIG)
    assert field in str(refused.value)


def test_an_intact_checkpoint_loads(tmp_path):
    torch.save({**GOOD, "strategy_state": {}, "config": CONFIG}, tmp_path / CHECKPOINT)
    ckpt = load(tmp_path, CONFIG)
    assert (ckpt.phase, ckpt.server_round, ckpt.history) == ("student", 2, [])
