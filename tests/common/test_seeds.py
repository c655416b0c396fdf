"""The named random streams: one number each, the numbers they had, the draws they made."""

import random
import zlib

import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import load_client_data, load_node_file, load_public, load_server_testset
from common.models import build_model, initial_model
from common.seeds import Stream, derive_seed, stream_rng
from server_app.sampling import NodeSampler
from server_app.strategies.kit.logits import public_subset

CFG = parse_run_config({"dataset": "synthetic", "partitioner": "iid"})


def old_derive_seed(seed: int, *keys: int) -> int:
    """derive_seed as it was when every call site passed a bare number."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def test_every_stream_has_its_own_number_and_keeps_the_one_it_had():
    numbers = [member.value for member in Stream.__members__.values()]
    assert len(numbers) == len(set(numbers))
    assert {s.name: s.value for s in Stream} == {
        "SERVER_TEST": 0,
        "SYNTHETIC_CLIENT": 1,
        "PARTITION_SPLIT": 2,
        "FILE_SPLIT": 3,
        "PUBLIC": 4,
        "PUBLIC_SUBSET": 60,
        "INITIAL_WEIGHTS": 10,
        "LOCAL_TRAINING": 20,
        "TEACHER_FINETUNE": 30,
        "SAMPLING": 40,
        "OWN_MODEL": 50,
        "TRANSFER": 51,
        "OWN_TRAINING": 52,
        "DIGEST": 53,
        "REVISIT": 54,
        "ENSEMBLE_BATCHES": 61,
        "FEDDF_BATCHES": 62,
        "GENERATOR_INIT": 63,
        "GENERATOR_TRAINING": 64,
        "GENERATOR_VALIDATION": 65,
        "GENERATED_BATCHES": 66,
        "FEDGEN_INIT": 67,
        "FEDGEN_TRAINING": 68,
        "FEDGEN_SAMPLES": 69,
        "DP_NOISE": 70,
        "BASELINE_TRAINING": 90,
    }


@pytest.mark.parametrize("stream", list(Stream))
def test_a_named_stream_draws_what_its_bare_number_drew(stream):
    assert derive_seed(42, stream, 7, 3) == old_derive_seed(42, stream.value, 7, 3)
    assert (
        stream_rng(42, stream, 7).integers(2**62, size=4).tolist()
        == np.random.default_rng([42, stream.value, 7]).integers(2**62, size=4).tolist()
    )


def test_a_bare_number_is_refused():
    with pytest.raises(TypeError, match="random stream 40 is not a member of Stream"):
        derive_seed(42, 40)
    with pytest.raises(TypeError, match="random stream 60 is not a member of Stream"):
        stream_rng(42, 60, 0, 3)


def test_call_sites_draw_as_before():
    # Numbers computed with the call sites' former expressions, e.g. derive_seed(42, 40).
    assert NodeSampler(42, 1).rng.getstate() == random.Random(386481062322112390).getstate()
    assert derive_seed(42, Stream.LOCAL_TRAINING, 7, 3, 1) == 8052549408597342066
    assert public_subset(5, 100, 42, 0, 3) == [18, 45, 55, 91, 93]
    assert public_subset(5, 100, 42, 0, 3) == sorted(
        np.random.default_rng([42, 60, 0, 3]).choice(100, size=5, replace=False).tolist()
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(old_derive_seed(42, 10, zlib.crc32(b"mlp-32")))
        before = build_model("mlp-32", "synthetic").state_dict()
    after = initial_model("mlp-32", "synthetic", 42).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_synthetic_data_is_drawn_as_before():
    for split, old_key, n in ((load_server_testset(CFG), 0, 1000), (load_public(CFG), 4, 500)):
        rng = np.random.default_rng([42, old_key])
        y = rng.choice(10, size=n, p=np.full(10, 0.1))
        x = rng.standard_normal((n, 32), dtype=np.float32)
        x[np.arange(n), y] += 2.0
        assert torch.equal(split.y, torch.as_tensor(y)) and torch.equal(split.x, torch.as_tensor(x))
    rng = np.random.default_rng([42, 1, 2])
    y = rng.choice(10, size=200, p=np.full(10, 0.1))
    assert torch.equal(load_client_data(CFG, 2, 4).train.y, torch.as_tensor(y))


def test_a_data_file_is_split_as_before(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 32), dtype=np.float32), y=np.arange(50) % 10)
    order = np.random.default_rng([42, 3, 5]).permutation(50)
    data = load_node_file(str(tmp_path / "d.npz"), CFG, stream=5)
    assert data.test.y.tolist() == (order[:10] % 10).tolist() and data.train.y.tolist() == (order[10:] % 10).tolist()
