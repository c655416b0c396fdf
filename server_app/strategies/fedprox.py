"""`fedprox`: FedProx (Li et al., MLSys 2020), FedAvg whose local training keeps near the global model."""

from pydantic import Field

from common.config import Settings
from common.protocol import PROXIMAL_MU
from server_app.round import RoundInput
from server_app.strategies.contract import register
from server_app.strategies.fedavg import FedAvg


class FedProxSettings(Settings):
    """FedProx's setting."""

    proximal_mu: float = Field(
        0.01, ge=0, description="weight mu of the proximal term mu/2 * ||w - w_global||^2 in local training (0: FedAvg)"
    )


@register("fedprox")
class FedProx(FedAvg):
    """FedAvg in which each node minimises its loss plus mu/2 * ||w - w_global||^2, which bounds how far
    heterogeneous nodes drift from the global model in a round."""

    Settings = FedProxSettings

    def train_config(self, r: RoundInput) -> dict:
        """`proximal-mu` for the nodes' local training."""
        return {PROXIMAL_MU: self.settings.proximal_mu}
