"""`feddf`: FedDF (Lin et al. 2020), FedAvg within each architecture, then ensemble distillation on the server."""

from collections.abc import Callable

import torch

from common.data import load_public
from common.distill import BatchFn, ValidationFn, ensemble_soft_targets, public_validation, random_batches
from common.seeds import Stream, derive_seed
from server_app.round import Globals, Reply, RoundInput, RoundResult
from server_app.strategies.contract import RoundSteps, register
from server_app.strategies.fedavg import FedAvg
from server_app.strategies.kit.distillation import DistillSettings, distill_groups, validation_cut
from server_app.strategies.kit.logits import PublicDataSettings, public_subset


class FedDFSettings(DistillSettings, PublicDataSettings):
    """FedDF's server-side distillation on the public inputs."""


@register("feddf")
class FedDF(FedAvg):
    """Each group's FedAvg model is distilled toward the ensemble of all received client models (every
    architecture) on unlabelled public inputs, stopping early on a labelled validation split."""

    Settings = FedDFSettings

    def round(self, r: RoundInput) -> RoundSteps:
        """Grouped FedAvg of `train.supervised`, then server-side ensemble distillation."""
        result, replies = yield from self.train_and_average(r)
        if replies:
            result.globals = self.distill(r, result, replies)
        return result

    def distill(self, r: RoundInput, result: RoundResult, replies: list[Reply]) -> Globals:
        """Each group's model in `result` distilled toward the ensemble of the replies' models; the distillation's
        metrics go into `result`."""
        teachers = [self.client_model(reply, r) for reply in replies]
        batches, validation = self.distillation_data(teachers, result, r)
        distilled, metrics = distill_groups(result.globals, self.task, self.settings, batches, validation)
        result.metrics.update(metrics)
        return distilled

    def distillation_data(
        self, teachers: list[torch.nn.Module], result: RoundResult, r: RoundInput
    ) -> tuple[Callable[[str], BatchFn], ValidationFn]:
        """Mini-batches of the public inputs with the ensemble's soft targets; early stopping by the error on a
        labelled validation split of the public data, as the paper stops on a validation set. The round's
        distilled models are kept: early stopping already chose the weights best on that split."""
        s = self.settings
        public = load_public(self.cfg, self.task)
        cut = validation_cut(len(public))
        phase_index = self.phases().index(r.phase)
        indices = public_subset(
            s.public_samples_per_round, len(public) - cut, self.cfg.seed, phase_index, r.server_round
        )
        x = public.x[cut:][indices]
        targets = ensemble_soft_targets(teachers, x, s.temperature)
        seed = derive_seed(self.cfg.seed, Stream.FEDDF_BATCHES, r.server_round)
        batches = lambda name: random_batches(x, targets, self.cfg.batch_size, seed)  # noqa: E731
        labelled = not self.cfg.public_dataset
        held = None if labelled else ensemble_soft_targets(teachers, public.x[:cut], s.temperature)
        return batches, public_validation(public.x[:cut], public.y[:cut], held, labelled, s.temperature)
