"""`fedprox`: FedProx (Li et al., MLSys 2020), FedAvg whose local training keeps near the global model."""

from common.protocol import PROXIMAL_MU
from server_app.strategies.base import register
from server_app.strategies.fedavg import FedAvgStudent


@register("fedprox")
class FedProx(FedAvgStudent):
    """FedAvg in which each node minimises its loss plus mu/2 * ||w - w_global||^2 (run config
    `proximal-mu`), which bounds how far heterogeneous nodes drift from the global model in a round."""

    def train_config(self, phase: str, server_round: int) -> dict:
        """`proximal-mu` for the nodes' local training."""
        return {PROXIMAL_MU: self.cfg.proximal_mu}
