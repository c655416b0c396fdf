"""`fedavg`: the baseline, FedAvg of each node's model on its local labels (McMahan et al. 2017); the weight-
averaging methods build on its round and change one step of it."""

from collections.abc import Generator

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from common.models import build_model, load_record
from common.protocol import ARRAYS, CONFIG, EVALUATE_INCOMING, MODEL, SERVER_ROUND, Action, message_type
from server_app.round import Ask, Phase, Reply, RoundInput, RoundResult
from server_app.screening import weights_check
from server_app.strategies.contract import RoundSteps, Strategy, register
from server_app.strategies.kit.averaging import Robustness, grouped_average
from server_app.strategies.kit.metrics import reply_metrics


@register("fedavg")
class FedAvg(Strategy):
    """Each round the sampled nodes train their group's global model (`train.supervised`), and each group's
    replies are averaged. Its hooks, each a step a method may change: the action and the message's config and
    records (what to send), `check_reply` (what else a reply must hold), `apply` (how an average becomes the
    model: FedAvgM and FedAdam apply a server optimiser)."""

    def action(self, phase: Phase) -> str:
        """The client action that trains a node's model in `phase`."""
        return Action.SUPERVISED

    def train_config(self, r: RoundInput) -> dict:
        """Settings a node needs for the round, added to every training message's config (FedProx: its mu)."""
        return {}

    def train_records(self, node: int, r: RoundInput) -> dict[str, ArrayRecord]:
        """Records a node needs besides its model (two-stage: the teacher; FedGen: the generator)."""
        return {}

    def check_reply(self, content: RecordDict) -> str | None:
        """What is wrong with a training reply beyond its weights and counts; None if nothing."""
        return None

    def apply(self, name: str, base: ArrayRecord, averaged: ArrayRecord, server_round: int) -> ArrayRecord:
        """Group `name`'s new model from its model `base` and its replies' average: the average, for FedAvg."""
        return averaged

    def client_model(self, reply: Reply, r: RoundInput) -> torch.nn.Module:
        """The model a training reply holds, built as its node's architecture."""
        model = build_model(self.architecture(reply.node, r.phase), self.task)
        return load_record(model, reply.content[ARRAYS])

    def round(self, r: RoundInput) -> RoundSteps:
        """Grouped FedAvg."""
        result, _ = yield from self.train_and_average(r)
        return result

    def train_and_average(self, r: RoundInput) -> Generator[Ask, list[Reply], tuple[RoundResult, list[Reply]]]:
        """Send each sampled node its group's model to train; average each group's replies. Returns the round's
        result and its accepted replies."""
        # A node that joined after the start may bring an architecture without a group yet.
        missing = {self.architecture(n, r.phase) for n in r.sampled} - r.globals.keys()
        globals_ = {**r.globals, **{name: self.initial_weights(name) for name in sorted(missing)}}
        config = {SERVER_ROUND: r.server_round, EVALUATE_INCOMING: r.server_round > 1, **self.train_config(r)}
        kind = message_type(MessageType.TRAIN, self.action(r.phase))
        messages, checks = [], []
        for node in r.sampled:
            name = self.architecture(node, r.phase)
            content = {
                ARRAYS: globals_[name],
                CONFIG: ConfigRecord({**config, MODEL: name}),
                **self.train_records(node, r),
            }
            messages.append(Message(RecordDict(content), dst_node_id=node, message_type=kind))
            checks.append(weights_check(globals_[name], self.cfg.max_num_examples, self.check_reply))
        replies = yield Ask(messages, checks)
        averaged, counts = grouped_average(
            globals_,
            replies,
            lambda node: self.architecture(node, r.phase),
            Robustness.of(self.cfg),
            lambda name, base, average: self.apply(name, base, average, r.server_round),
            r.server_round,
        )
        result = RoundResult(averaged, counts)
        if replies:
            result.metrics.update(reply_metrics([reply.content for reply in replies]))
        return result, replies
