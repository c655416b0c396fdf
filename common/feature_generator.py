"""FedGen's generator (Zhu, Hong and Zhou, ICML 2021): class-conditional features for the models' heads.

A fedkd model is an nn.Sequential whose last layer is its linear head (the paper's prediction layer
θ^p); what feeds it is the feature space the generator samples. Architectures of different feature
widths share the generator's body and have one output layer per width, so one generator serves a
heterogeneous federation.
"""

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.data import builtin_task
from common.loss import diversity_loss
from common.models import build_model
from common.seeds import Stream, derive_seed
from common.task import Task
from common.training import fit_generator

NOISE_DIM = 32
HIDDEN = 64
# The clients' generator terms decay by this factor a round, as in the authors' code.
DECAY = 0.98


def head(model: nn.Module) -> nn.Linear:
    """The model's prediction layer: the last layer of an nn.Sequential (every model of the zoo), else the
    last child module a model registers (a user's model that defines its `fc` last)."""
    layers = list(model) if isinstance(model, nn.Sequential) else list(model.children())
    last = layers[-1] if layers else None
    if not isinstance(last, nn.Linear):
        raise TypeError(
            f"the last layer of {type(model).__name__} is {type(last).__name__}, not a linear head; "
            "FedGen needs a model whose last layer is an nn.Linear that maps its features to the logits"
        )
    return last


@functools.cache
def feature_width(name: str, task: Task | str) -> int:
    """The width of the features architecture `name`'s head reads on `task`; ValueError naming the model
    if it has no linear head, or (a user's model) if what that layer returns is not the model's output."""
    task = builtin_task(task) if isinstance(task, str) else task
    model = build_model(name, task)
    try:
        layer = head(model)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: {exc}") from None
    if ":" in name:
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(2, task.features))
        finally:
            hook.remove()
        if not seen or not torch.equal(seen[-1], out):
            raise ValueError(
                f"model {name!r}: its last child module, {type(layer).__name__}({layer.in_features}, "
                f"{layer.out_features}), does not give the model's output; FedGen needs a model whose last "
                "layer is an nn.Linear that maps its features to the logits"
            )
    return layer.in_features


class FeatureGenerator(nn.Module):
    """(noise, class) -> a feature vector for each width: a ReLU body shared by all widths and one output
    layer per width. Outputs pass a ReLU because the features a fedkd head sees are post-ReLU."""

    def __init__(self, num_classes: int, widths: Sequence[int], seed: int) -> None:
        super().__init__()
        self.num_classes, self.seed = num_classes, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, Stream.FEDGEN_INIT))
            self.body = nn.Sequential(nn.Linear(NOISE_DIM + num_classes, HIDDEN), nn.ReLU())
        self.heads = nn.ModuleDict()
        for width in widths:
            self.add_width(width)

    def add_width(self, width: int) -> None:
        """An output layer for `width`, its weights drawn from (seed, width) whatever the order widths come in."""
        if str(width) in self.heads:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, Stream.FEDGEN_INIT, width))
            self.heads[str(width)] = nn.Linear(HIDDEN, width)

    @property
    def widths(self) -> list[int]:
        """The feature widths it generates, ascending."""
        return sorted(int(w) for w in self.heads)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features meant to be classified as `labels`, for every width."""
        hidden = self.body(torch.cat([noise, F.one_hot(labels, self.num_classes).float()], dim=1))
        return {int(w): F.relu(layer(hidden)) for w, layer in self.heads.items()}

    def for_width(self, width: int) -> dict[str, torch.Tensor]:
        """The weights a node of feature width `width` needs: the body and that width's output layer."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("body.") or k.startswith(f"heads.{width}.")}


def draw(labels: Sequence[int], n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, labels): n Gaussian noise vectors, and n labels drawn uniformly from `labels`."""
    picked = torch.as_tensor(list(labels), dtype=torch.long)[torch.randint(len(labels), (n,), generator=generator)]
    return torch.randn(n, NOISE_DIM, generator=generator), picked


def generator_loss(
    gen: FeatureGenerator,
    heads: Sequence[nn.Linear],
    weights: torch.Tensor,
    noise: torch.Tensor,
    labels: torch.Tensor,
    diversity: float,
) -> torch.Tensor:
    """FedGen's server objective on one batch: sum over clients k of the batch mean of
    weights[k, y] * CE(head_k(G(noise, y)), y), plus `diversity` x the diversity loss (averaged over widths).

    weights[k, y] is client k's share of the examples of class y (the paper's α_k,y), so each class is
    taught by the heads of the clients that hold it.
    """
    features = gen(noise, labels)
    teacher = sum(
        (weights[k, labels] * F.cross_entropy(h(features[h.in_features]), labels, reduction="none")).mean()
        for k, h in enumerate(heads)
    )
    spread = torch.stack([diversity_loss(noise, f) for f in features.values()]).mean()
    return teacher + diversity * spread


def label_weights(counts: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(α, labels): each client's share of each class's examples, and the classes more than one example of
    which some client holds (the authors' qualified labels; the generator learns only those)."""
    counts = counts.double()
    totals = counts.sum(0)
    weights = torch.where(totals > 0, counts / totals.clamp(min=1), torch.zeros_like(counts))
    return weights.float(), [int(c) for c in torch.nonzero(counts.max(0).values > 1).flatten()]


def train_feature_generator(
    gen: FeatureGenerator,
    heads: Sequence[nn.Linear],
    counts: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    diversity: float,
    seed: int,
) -> tuple[float | None, list[int]]:
    """Fit `gen` to the clients' `heads` and label `counts` (clients x classes) with Adam; returns the last
    loss (None if no node counted a label, so nothing was fitted) and the labels it learned."""
    for width in {h.in_features for h in heads}:
        gen.add_width(width)
    weights, labels = label_weights(counts)
    if not labels:
        return None, labels
    loss = fit_generator(
        gen,
        heads,
        lambda rng: generator_loss(gen, heads, weights, *draw(labels, batch_size, rng), diversity),
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
    )
    return loss, labels


def regularised_loss(
    model: nn.Sequential,
    gen: FeatureGenerator,
    labels: Sequence[int],
    *,
    alpha: float,
    beta: float,
    server_round: int,
    seed: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A client's FedGen loss on a batch of (logits, y): cross-entropy, plus alpha x the cross-entropy of its
    head on generated features of labels drawn from `labels`, plus beta x KL(model(x) || head(G(y))) that
    pulls its prediction toward what its head makes of generated features of the batch's own classes.
    alpha and beta decay by DECAY a round after the first, as in the authors' code; the generator is frozen."""
    scale = DECAY ** (server_round - 1)
    alpha, beta = alpha * scale, beta * scale
    prediction_layer = head(model)  # the same module wherever train() moves the model
    width = prediction_layer.in_features
    rng = torch.Generator().manual_seed(seed)
    gen.requires_grad_(False).eval()

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        noise, sampled = draw(labels, len(y), rng)
        with torch.no_grad():
            sampled_features = gen(noise, sampled)[width].to(logits.device)
            own_features = gen(torch.randn(len(y), NOISE_DIM, generator=rng), y.cpu())[width].to(logits.device)
        teacher = F.cross_entropy(prediction_layer(sampled_features), sampled.to(logits.device))
        target = F.softmax(prediction_layer(own_features), dim=1).detach()
        latent = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        return F.cross_entropy(logits, y) + alpha * teacher + beta * latent

    return loss
