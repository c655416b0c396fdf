"""`fedavgm`: FedAvgM (Hsu, Qi and Brown 2019), FedAvg whose server applies each round's average with momentum."""

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flower
from pydantic import Field

from common.config import Settings
from server_app.strategies.contract import register
from server_app.strategies.fedavg import FedAvg
from server_app.strategies.kit.server_optimiser import flower_step


class FedAvgMSettings(Settings):
    """FedAvgM's server optimiser: SGD with momentum on the pseudo-gradient (global model minus the average)."""

    server_learning_rate: float = Field(
        1.0, gt=0, description="the server's SGD learning rate (1 with momentum 0: FedAvg)"
    )
    server_momentum: float = Field(0.9, ge=0, lt=1, description="the server's momentum")


@register("fedavgm")
class FedAvgM(FedAvg):
    """Each group's model moves by its server's momentum SGD step, Flower's `FedAvgM` (one per architecture)."""

    Settings = FedAvgMSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.optimisers: dict[str, flower.FedAvgM] = {}

    def _optimiser(self, name: str) -> flower.FedAvgM:
        if name not in self.optimisers:
            self.optimisers[name] = flower.FedAvgM(
                server_learning_rate=self.settings.server_learning_rate, server_momentum=self.settings.server_momentum
            )
        return self.optimisers[name]

    def apply(self, name: str, base: ArrayRecord, averaged: ArrayRecord, server_round: int) -> ArrayRecord:
        """Flower's FedAvgM step from `base`."""
        optimiser = self._optimiser(name)
        optimiser.current_arrays = base
        return flower_step(optimiser, base, averaged, server_round)

    def state(self) -> dict[str, ArrayRecord]:
        """Each group's momentum, once it has one."""
        return {
            f"momentum/{name}": ArrayRecord({str(i): Array(v) for i, v in enumerate(opt.momentum_vector)})
            for name, opt in self.optimisers.items()
            if opt.momentum_vector is not None
        }

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back each group's momentum."""
        for key, record in state.items():
            vector = [np.array(record[str(i)].numpy()) for i in range(len(record))]
            self._optimiser(key.removeprefix("momentum/")).momentum_vector = vector
