"""`feddf-datafree`: FedDF with no data on the server; it distils on inputs from a generator it trains."""

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord

from common.data import dataset_shape, image_shape
from common.distill import BatchFn, ValidationFn, ensemble_disagreement, ensemble_logits
from common.generator import Generator, generated_batches, train_generator
from common.models import build_model, load_record, to_record
from common.seeds import Stream, derive_seed
from server_app.strategies.base import Round, register
from server_app.strategies.feddf import FedDF

VALIDATION_SAMPLES = 256


@register("feddf-datafree")
class FedDFDataFree(FedDF):
    """Each round a conditional generator is trained against the ensemble of received client models
    (its samples must be classified as their sampled class by the ensemble, and disagreed on by the
    current students); the students then distil from the ensemble on its samples."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        features, classes = dataset_shape(self.cfg.dataset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_INIT))
            self.generator = Generator(features, classes, bounded=image_shape(self.cfg.dataset) is not None)

    def state(self) -> dict[str, ArrayRecord]:
        """The generator, trained over the rounds so far."""
        return {"generator": to_record(self.generator)}

    def distill_budget(self) -> tuple[int, int]:
        """`datafree-steps` and `datafree-patience`."""
        return self.cfg.datafree_steps, self.cfg.datafree_patience

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Continue with the checkpointed generator."""
        load_record(self.generator, state["generator"])

    def distillation_data(
        self, teachers: list[torch.nn.Module], result: Round, server_round: int
    ) -> tuple[Callable[[str], BatchFn], ValidationFn]:
        """Train the generator this round, then draw distillation batches and a validation set from it."""
        students = [load_record(build_model(name, self.cfg.dataset), arrays) for name, arrays in result.globals.items()]
        result.metrics["generator-loss"] = train_generator(
            self.generator, teachers, students, steps=self.cfg.datafree_steps, batch_size=self.cfg.batch_size,
            learning_rate=self.cfg.server_learning_rate, temperature=self.cfg.temperature,
            seed=derive_seed(self.cfg.seed, Stream.GENERATOR_TRAINING, server_round),
        )
        with torch.no_grad():
            x_val, _ = self.generator.sample(VALIDATION_SAMPLES, torch.Generator().manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_VALIDATION, server_round)))
            validation = ensemble_disagreement(x_val, ensemble_logits(teachers, x_val), self.cfg.temperature)
        seed = derive_seed(self.cfg.seed, Stream.GENERATED_BATCHES, server_round)
        return (lambda name: generated_batches(self.generator, teachers, self.cfg.batch_size, seed)), validation
