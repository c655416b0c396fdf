"""`fedavg`: the baseline, FedAvg of each node's model on its local labels, no distillation."""

from flwr.serverapp import Grid

from common.protocol import Action
from server_app.strategies.base import Globals, Round, Strategy, register


@register("fedavg")
class FedAvgStudent(Strategy):
    """FedAvg (McMahan et al. 2017) of the student models, within each architecture group."""

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Grouped FedAvg of `train.supervised`."""
        return self.train_round(phase, server_round, globals_, grid, Action.SUPERVISED)[0]
