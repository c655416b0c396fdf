"""`fedmd`: FedMD (Li & Wang 2019), nodes keep their own models and share only logits on public data."""

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.data import load_public, load_server_testset
from common.distill import consensus
from common.models import logits_from_record, logits_to_record
from common.protocol import (
    CONFIG, CONSENSUS, INDICES, LOGITS, PUBLIC, REPORT_TEST_LOGITS, SERVER_ROUND, SOURCE, SOURCE_OWN, SPLIT, TEST_LOGITS,
    TRAIN_DIGEST,
)
from server_app.strategies.base import Globals, Round, Strategy


class FedMD(Strategy):
    """Each round: sampled nodes send logits on a public subset (`query.logits`), the server averages
    them into a consensus, and the nodes digest it and revisit their data (`train.digest`).

    No model leaves a node, so there are no global weights; with the built-in server test set,
    nodes report logits on its inputs and the server scores each architecture from them.
    """

    phases = ("student",)

    def initial(self, phase: str, grid: Grid, previous: Globals | None) -> Globals:
        """No global models: each node's model stays on the node."""
        return {}

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Communicate, aggregate, distribute, digest, revisit."""
        indices = self.public_subset(len(load_public(self.cfg)), server_round, phase)
        nodes = self.sample(grid)
        config = {SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: server_round}
        result = Round({}, nodes, [self.query_logits(grid, nodes, {**config, SOURCE: SOURCE_OWN})], scores_previous=False)
        replies = self.screen_logits(result.exchanges[0], len(indices), result)
        if not replies:
            return result
        agreed = logits_to_record(consensus([logits_from_record(m.content[LOGITS]) for m in replies]), self.cfg.logits_dtype)
        report = self.cfg.server_test == "builtin"
        messages = [
            Message(RecordDict({CONSENSUS: agreed, CONFIG: ConfigRecord({**config, REPORT_TEST_LOGITS: report})}),
                    dst_node_id=m.metadata.src_node_id, message_type=TRAIN_DIGEST)
            for m in replies
        ]
        result.exchanges.append(self.send(grid, messages))
        if report:
            digested = self.screen_logits(result.exchanges[1], len(load_server_testset(self.cfg)), result, TEST_LOGITS)
        else:
            digested = self.screen(result.exchanges[1], lambda node: None, result)
        if digested:
            result.metrics.update(self.train_metrics_aggr_fn([m.content for m in digested], self.weighted_by_key))
        if report:
            result.test_logits = {}
            for m in digested:
                name = self.architecture(m.metadata.src_node_id, phase)
                result.test_logits.setdefault(name, []).append(logits_from_record(m.content[TEST_LOGITS]))
        return result
