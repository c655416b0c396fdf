"""`fedmd`: FedMD (Li & Wang 2019), nodes keep their own models and share only logits on public data."""

import statistics
from dataclasses import dataclass, field

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.data import Split, load_public, load_server_testset
from common.distill import consensus
from common.models import logits_from_record, logits_to_record
from common.protocol import (
    CONFIG,
    CONSENSUS,
    INDICES,
    LOGITS,
    NUM_EXAMPLES,
    PUBLIC,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_OWN,
    SPLIT,
    TEST_LOGITS,
    TRAIN_DIGEST,
)
from server_app.strategies.base import Globals, Round, Scores, Strategy, register, sum_eval_counts


@dataclass
class FedMDRound(Round):
    """A FedMD round, with each architecture's nodes' logits on the server's test inputs."""

    test_logits: dict[str, list[torch.Tensor]] = field(default_factory=dict)


@register("fedmd")
class FedMD(Strategy):
    """Each round: sampled nodes send logits on a public subset (`query.logits`), the server averages
    them into a consensus, and the nodes digest it and revisit their data (`train.digest`).

    No model leaves a node, so there are no global weights; with the built-in server test set,
    nodes report logits on its inputs and the server scores each architecture from them.
    """

    def initial(self, phase: str, grid: Grid, previous: Globals | None) -> Globals:
        """No global models: each node's model stays on the node."""
        return {}

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Communicate, aggregate, distribute, digest, revisit."""
        indices = self.public_subset(len(load_public(self.cfg)), server_round, phase)
        nodes = self.sample(grid)
        config = {SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: server_round}
        result = FedMDRound(
            {}, nodes, [self.query_logits(grid, nodes, {**config, SOURCE: SOURCE_OWN})], scores_previous=False
        )
        replies = self.screen_logits(result.exchanges[0], len(indices), result)
        if not replies:
            return result
        agreed = logits_to_record(
            consensus([logits_from_record(m.content[LOGITS]) for m in replies]), self.cfg.logits_dtype
        )
        report = self.cfg.server_test == "builtin"
        messages = [
            Message(
                RecordDict({CONSENSUS: agreed, CONFIG: ConfigRecord({**config, REPORT_TEST_LOGITS: report})}),
                dst_node_id=m.metadata.src_node_id,
                message_type=TRAIN_DIGEST,
            )
            for m in replies
        ]
        result.exchanges.append(self.send(grid, messages))
        if report:
            digested = self.screen_logits(result.exchanges[1], len(load_server_testset(self.cfg)), result, TEST_LOGITS)
        else:
            digested = self.screen(result.exchanges[1], lambda node: None, result)
        if digested:
            result.metrics.update(sum_eval_counts([m.content for m in digested], NUM_EXAMPLES))
        if report:
            for m in digested:
                name = self.architecture(m.metadata.src_node_id, phase)
                result.test_logits.setdefault(name, []).append(logits_from_record(m.content[TEST_LOGITS]))
        return result

    def score(self, result: Round, test: Split) -> Scores:
        """Each architecture's mean (cross-entropy, accuracy) over its nodes' logits on the test inputs."""
        assert isinstance(result, FedMDRound)
        scores = {}
        for name, logits in result.test_logits.items():
            pairs = [
                (float(torch.nn.functional.cross_entropy(t, test.y)), int((t.argmax(1) == test.y).sum()) / len(test.y))
                for t in logits
            ]
            scores[name] = (statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs))
        return scores

    def private_epochs(self) -> int:
        """A node's first training of its own model, then a revisit a round (the digest is on public data)."""
        return super().private_epochs() + self.cfg.local_epochs
