"""The bounds a federated run is read against: centralised (pooled data) and local-only training."""

import statistics

import torch

from common.config import RunConfig
from common.data import Split, load_client_data, load_server_testset
from common.models import initial_model
from common.seeds import Stream, derive_seed
from common.training import evaluate, train


def _accuracy(cfg: RunConfig, name: str, data: Split, epochs: int, stream: int) -> float:
    """Train architecture `name` on `data` from the run's initial weights; its server-test accuracy."""
    model = initial_model(name, cfg.dataset, cfg.seed)
    train(model, data.x, (data.y,), epochs=epochs, batch_size=cfg.batch_size,
          learning_rate=cfg.learning_rate, seed=derive_seed(cfg.seed, Stream.BASELINE_TRAINING, stream))
    test = load_server_testset(cfg)
    return evaluate(model, test.x, test.y)[1] / len(test)


def centralised(cfg: RunConfig, names: list[str], num_partitions: int, epochs: int) -> dict[str, float]:
    """Each architecture trained on the pooled training data of all clients: the upper bound."""
    parts = [load_client_data(cfg, p, num_partitions).train for p in range(num_partitions)]
    pooled = Split(torch.cat([s.x for s in parts]), torch.cat([s.y for s in parts]))
    return {name: _accuracy(cfg, name, pooled, epochs, 0) for name in names}


def local_only(cfg: RunConfig, num_partitions: int, epochs: int) -> dict[str, float]:
    """Each client trains its own architecture on its own data alone; mean accuracy per architecture."""
    scores: dict[str, list[float]] = {}
    for p in range(num_partitions):
        name = cfg.node_model({"partition-id": p})
        scores.setdefault(name, []).append(_accuracy(cfg, name, load_client_data(cfg, p, num_partitions).train, epochs, p + 1))
    return {name: statistics.fmean(values) for name, values in scores.items()}
