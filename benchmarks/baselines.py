"""The bounds a federated run is read against: centralised (pooled data) and local-only training."""

import statistics

import torch

from common.config import RunConfig
from common.data import Split, load_client_data, load_server_testset
from common.models import initial_model
from common.privacy import DPSGD, Ledger, noise_multiplier, sample_rate, steps_per_epoch
from common.seeds import Stream, derive_seed
from common.training import evaluate, train


def _accuracy(cfg: RunConfig, name: str, data: Split, epochs: int, stream: int, ledger: Ledger | None = None) -> float:
    """Train architecture `name` on `data` from the run's initial weights (DP-SGD charged to `ledger` if given);
    its server-test accuracy."""
    model = initial_model(name, cfg.dataset, cfg.seed)
    seed = derive_seed(cfg.seed, Stream.BASELINE_TRAINING, stream)
    # The noise seed is derived from the batch seed as client_app/app.py derives it.
    privacy = DPSGD(ledger, derive_seed(cfg.seed, Stream.DP_NOISE, seed)) if ledger else None
    train(
        model,
        data.x,
        (data.y,),
        epochs=epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        privacy=privacy,
    )
    test = load_server_testset(cfg)
    return evaluate(model, test.x, test.y)[1] / len(test)


def private_ledger(cfg: RunConfig, num_examples: int, epochs: int) -> Ledger:
    """A fresh ledger whose noise spends `dp-epsilon` at `dp-delta` over `epochs` epochs of `num_examples`,
    calibrated as a node's (client_app/app.py `_ledger`) with those epochs as its private horizon."""
    rate = sample_rate(num_examples, cfg.batch_size)
    steps = epochs * steps_per_epoch(num_examples, cfg.batch_size)
    return Ledger(
        cfg.dp_epsilon, cfg.dp_delta, cfg.dp_max_grad_norm, noise_multiplier(cfg.dp_epsilon, cfg.dp_delta, rate, steps)
    )


def centralised(cfg: RunConfig, names: list[str], num_partitions: int, epochs: int) -> dict[str, float]:
    """Each architecture trained on the pooled training data of all clients: the upper bound."""
    parts = [load_client_data(cfg, p, num_partitions).train for p in range(num_partitions)]
    pooled = Split(torch.cat([s.x for s in parts]), torch.cat([s.y for s in parts]))
    return {name: _accuracy(cfg, name, pooled, epochs, 0) for name in names}


def local_only(
    cfg: RunConfig, num_partitions: int, epochs: int, privacy: dict[int, Ledger] | None = None
) -> dict[str, float]:
    """Each client trains its own architecture on its own data alone; mean accuracy per architecture.

    With `privacy` (a dict, filled here), each client trains with DP-SGD under the run config's
    `dp-epsilon`, `dp-delta` and `dp-max-grad-norm`, its noise calibrated to spend the budget over
    the `epochs`; `privacy[partition]` receives the client's ledger (`.spent()` is its ε).
    """
    if privacy is not None and cfg.dp_epsilon <= 0:
        raise ValueError("local_only with privacy needs run config 'dp-epsilon' > 0")
    scores: dict[str, list[float]] = {}
    for p in range(num_partitions):
        name = cfg.node_model({"partition-id": p})
        data = load_client_data(cfg, p, num_partitions).train
        ledger = None
        if privacy is not None:
            ledger = privacy[p] = private_ledger(cfg, len(data), epochs)
        scores.setdefault(name, []).append(_accuracy(cfg, name, data, epochs, p + 1, ledger))
    return {name: statistics.fmean(values) for name, values in scores.items()}
