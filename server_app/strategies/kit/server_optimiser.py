"""A server optimiser's step by Flower's own strategies (`flwr.serverapp.strategy.FedAvgM`, `FedAdam`, ...): the
apply step of methods that treat the average of the replies as a pseudo-gradient (Reddi et al. 2021)."""

import logging
from contextlib import contextmanager

from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import FedAvg

from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES


@contextmanager
def quiet_flower():
    # Flower's aggregate_train logs "Received 1 results" for the one record it is handed here, which would
    # contradict the round's own log line.
    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        FLOWER_LOGGER.setLevel(level)


def flower_step(optimiser: FedAvg, base: ArrayRecord, averaged: ArrayRecord, server_round: int) -> ArrayRecord:
    """`optimiser`'s `aggregate_train` of one reply that holds `averaged` (the average of one record is itself,
    exactly), so that only its server optimiser's step from `base` acts; the caller sets the optimiser's
    `current_arrays` to `base` first. The result has `base`'s dtypes: Flower's FedAdam computes in float64, and
    the nodes train, and replies are screened against, the model's own dtypes."""
    reply = Message(
        RecordDict({ARRAYS: averaged, METRICS: MetricRecord({NUM_EXAMPLES: 1})}),
        dst_node_id=0,
        message_type=MessageType.TRAIN,
    )
    with quiet_flower():
        arrays, _ = optimiser.aggregate_train(server_round, [reply])
    return ArrayRecord({key: Array(arrays[key].numpy().astype(base[key].dtype)) for key in base.keys()})
