"""`feddf`: FedDF (Lin et al. 2020), FedAvg within each architecture, then ensemble distillation on the server."""

from collections.abc import Callable

import torch
from flwr.app import Message
from flwr.serverapp import Grid

from common.data import load_public
from common.distill import BatchFn, ValidationFn, ensemble_soft_targets, labelled_error, random_batches
from common.protocol import Action
from common.seeds import Stream, derive_seed
from server_app.strategies.base import STUDENT_PHASE, Globals, Round, Strategy, register

# Share of the public inputs held out for early stopping.
VALIDATION_SHARE = 0.2


@register("feddf")
class FedDF(Strategy):
    """Each group's FedAvg model is distilled toward the ensemble of all received client models
    (every architecture) on unlabelled public inputs, stopping early on a labelled validation split."""

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Grouped FedAvg of `train.supervised`, then server-side ensemble distillation."""
        result, replies = self.train_round(phase, server_round, globals_, grid, Action.SUPERVISED)
        if not replies:
            return result
        teachers = self.models_of(replies, phase)
        batches, validation = self.distillation_data(teachers, result, server_round)
        distilled = self.distil_groups(phase, result.globals, batches, validation, result)
        result.globals = self.keep(phase, result.globals, distilled, replies, grid, result)
        return result

    def keep(
        self, phase: str, averaged: Globals, distilled: Globals, replies: list[Message], grid: Grid, into: Round
    ) -> Globals:
        """The models a round ends with, of each group's FedAvg and distilled ones: the distilled, whose
        early stopping already kept the weights best on labelled public data."""
        return distilled

    def distillation_data(
        self, teachers: list[torch.nn.Module], result: Round, server_round: int
    ) -> tuple[Callable[[str], BatchFn], ValidationFn]:
        """Mini-batches of the public inputs with the ensemble's soft targets; early stopping by the error
        on a labelled validation split of the public data, as the paper stops on a validation set."""
        public = load_public(self.cfg)
        cut = max(1, int(len(public) * VALIDATION_SHARE))
        x = public.x[cut:][self.public_subset(len(public) - cut, server_round, STUDENT_PHASE)]
        targets = ensemble_soft_targets(teachers, x, self.cfg.temperature)
        seed = derive_seed(self.cfg.seed, Stream.FEDDF_BATCHES, server_round)
        return (lambda name: random_batches(x, targets, self.cfg.batch_size, seed)), labelled_error(
            public.x[:cut], public.y[:cut]
        )
