"""`fedavg`: the baseline, FedAvg of each node's model on its local labels, no distillation."""

from server_app.strategies.base import Strategy


class FedAvgStudent(Strategy):
    """FedAvg (McMahan et al. 2017) of the student models, within each architecture group."""

    phases = ("student",)
