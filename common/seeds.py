"""Independent, reproducible random streams under the run's `seed`, each named in `Stream`.

scikit-learn's stratified slices and flwr-datasets' partitioners are given the run's `seed` itself.
"""

from enum import IntEnum, unique

import numpy as np


@unique
class Stream(IntEnum):
    """Every random stream of a run. The number keys the stream's draws: changing it changes results."""

    # Drawn by a generator from `stream_rng`:
    SERVER_TEST = 0  # the synthetic server test set
    SYNTHETIC_CLIENT = 1  # a synthetic partition: its label distribution, training and test samples
    PARTITION_SPLIT = 2  # the order of an image partition's samples, cut into local training and test data
    FILE_SPLIT = 3  # the local test rows held out of a node's data file that has no test pair
    PUBLIC = 4  # the synthetic public slice
    PUBLIC_SUBSET = 60  # the public samples a round uses (`public-samples-per-round`), per phase and round
    # Seeds from `derive_seed`:
    INITIAL_WEIGHTS = 10  # a model's initial weights, per architecture
    LOCAL_TRAINING = 20  # a node's shuffle when training a global model, per architecture, round and node
    TEACHER_FINETUNE = 30  # a node's shuffle when fine-tuning the global teacher (`teacher-finetune-epochs`)
    SAMPLING = 40  # the server's node sampling
    OWN_MODEL = 50  # FedMD: the initial weights of a node's own model
    TRANSFER = 51  # FedMD: a node's shuffle in transfer learning on the public data
    OWN_TRAINING = 52  # FedMD: a node's shuffle in its own model's first training on local data
    DIGEST = 53  # FedMD: a node's shuffle when digesting the consensus, per round
    REVISIT = 54  # FedMD: a node's shuffle when revisiting its local data, per round
    ENSEMBLE_BATCHES = 61  # two-stage with `ensemble-teacher`: the server's distillation batches, per round
    FEDDF_BATCHES = 62  # FedDF: the server's distillation batches, per round
    GENERATOR_INIT = 63  # feddf-datafree: the generator's initial weights
    GENERATOR_TRAINING = 64  # feddf-datafree: the generator's training, per round
    GENERATOR_VALIDATION = 65  # feddf-datafree: the generated validation samples, per round
    GENERATED_BATCHES = 66  # feddf-datafree: the generated distillation batches, per round
    FEDGEN_INIT = 67  # fedgen: the generator's initial weights (its body, and each width's output layer)
    FEDGEN_TRAINING = 68  # fedgen: the generator's training on the server, per round
    FEDGEN_SAMPLES = 69  # fedgen: a node's generated features in local training, per round and node
    DP_NOISE = 70  # DP-SGD's Gaussian noise, per training (keyed by that training's batch seed)
    BASELINE_TRAINING = 90  # benchmarks: the shuffle of centralised and local-only training


def _named(stream: Stream) -> Stream:
    if not isinstance(stream, Stream):
        raise TypeError(f"random stream {stream!r} is not a member of Stream; name every stream there")
    return stream


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed for `stream` (and `keys` within it) under the run's `seed`."""
    return int(np.random.SeedSequence([seed, _named(stream), *keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def stream_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """numpy's generator for `stream` (and `keys` within it) under the run's `seed`."""
    return np.random.default_rng([seed, _named(stream), *keys])
