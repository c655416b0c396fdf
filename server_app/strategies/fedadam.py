"""`fedadam`: FedAdam (Reddi et al., ICLR 2021), FedAvg whose server applies each round's average with Adam."""

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flower
from pydantic import Field

from common.config import Settings
from server_app.strategies.contract import register
from server_app.strategies.fedavg import FedAvg
from server_app.strategies.kit.server_optimiser import flower_step


class FedAdamSettings(Settings):
    """FedAdam's server optimiser: Adam on the pseudo-gradient (the average minus the global model)."""

    # Flower's default η. At 0.01 an Adam step moves each weight by about η a round, too little to leave the
    # initial weights in fedkd's 15-25 rounds.
    server_learning_rate: float = Field(0.1, gt=0, description="the server's Adam learning rate η")
    beta_1: float = Field(0.9, ge=0, lt=1, description="decay of the first moment")
    beta_2: float = Field(0.99, ge=0, lt=1, description="decay of the second moment")
    tau: float = Field(0.001, gt=0, description="τ, the adaptivity: added to the root of the second moment")


@register("fedadam")
class FedAdam(FedAvg):
    """Each group's model moves by its server's Adam step, Flower's `FedAdam` (one per architecture)."""

    Settings = FedAdamSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.optimisers: dict[str, flower.FedAdam] = {}

    def _optimiser(self, name: str) -> flower.FedAdam:
        if name not in self.optimisers:
            s = self.settings
            self.optimisers[name] = flower.FedAdam(
                eta=s.server_learning_rate, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau
            )
        return self.optimisers[name]

    def apply(self, name: str, base: ArrayRecord, averaged: ArrayRecord, server_round: int) -> ArrayRecord:
        """Flower's FedAdam step from `base`."""
        optimiser = self._optimiser(name)
        optimiser.current_arrays = {key: array.numpy() for key, array in base.items()}
        return flower_step(optimiser, base, averaged, server_round)

    def state(self) -> dict[str, ArrayRecord]:
        """Each group's first and second moments, once it has them."""
        out = {}
        for name, opt in self.optimisers.items():
            for moment in ("m_t", "v_t"):
                if getattr(opt, moment):
                    out[f"{moment}/{name}"] = ArrayRecord({k: Array(v) for k, v in getattr(opt, moment).items()})
        return out

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back each group's moments."""
        for key, record in state.items():
            moment, name = key.split("/", 1)
            setattr(self._optimiser(name), moment, {k: np.array(a.numpy()) for k, a in record.items()})
