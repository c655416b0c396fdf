"""fedkd's strategies, by run-config `strategy` name; each is one file over `base`."""

from server_app.strategies.base import Globals, Round, Strategy
from server_app.strategies.feddf import FedDF
from server_app.strategies.feddf_datafree import FedDFDataFree
from server_app.strategies.fedavg import FedAvgStudent
from server_app.strategies.fedmd import FedMD
from server_app.strategies.two_stage import TwoStage

STRATEGIES: dict[str, type[Strategy]] = {
    "two-stage": TwoStage,
    "fedavg": FedAvgStudent,
    "fedmd": FedMD,
    "feddf": FedDF,
    "feddf-datafree": FedDFDataFree,
}

__all__ = ["STRATEGIES", "Globals", "Round", "Strategy"]
