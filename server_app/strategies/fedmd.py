"""`fedmd`: FedMD (Li & Wang 2019), nodes keep their own models and share only logits on public data."""

import statistics

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from pydantic import Field

from common.data import Split, load_public
from common.distill import consensus
from common.models import logits_from_record, logits_to_record
from common.protocol import (
    CONFIG,
    CONSENSUS,
    DIGEST_EPOCHS,
    INDICES,
    LOGITS,
    LOGITS_DTYPE,
    PUBLIC,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_OWN,
    SPLIT,
    TEMPERATURE,
    TEST_LOGITS,
    TRAIN_DIGEST,
    TRANSFER_EPOCHS,
)
from server_app.round import Ask, Globals, Phase, RoundInput, RoundResult, Scores
from server_app.screening import logits_check, screen_reply
from server_app.strategies.contract import RoundSteps, Strategy, register
from server_app.strategies.kit.logits import LogitsSettings, logits_queries, public_subset
from server_app.strategies.kit.metrics import reply_metrics


class FedMDSettings(LogitsSettings):
    """The nodes' transfer learning and digest."""

    temperature: float = Field(3.0, gt=0, description="temperature of the digest toward the consensus")
    transfer_epochs: int = Field(
        5, ge=0, description="epochs on the labelled public data before a node's first private training"
    )
    digest_epochs: int = Field(10, ge=1, description="epochs toward the consensus per round")


@register("fedmd")
class FedMD(Strategy):
    """Each round: sampled nodes send logits on a public subset (`query.logits`), the server averages them into a
    consensus, and the nodes digest it and revisit their data (`train.digest`). No model leaves a node, so there
    are no global models; with the built-in server test set, nodes report logits on its inputs and the server
    scores each architecture from them.
    """

    Settings = FedMDSettings

    def initial(self, phase: Phase, connected: list[int], previous: Globals | None) -> Globals:
        """No global models: each node's model stays on the node."""
        return {}

    def private_epochs(self) -> int:
        """A node's first training of its own model, then a revisit a round (the digest is on public data)."""
        return super().private_epochs() + self.cfg.local_epochs

    def round(self, r: RoundInput) -> RoundSteps:
        """Communicate, aggregate, distribute, digest, revisit."""
        s = self.settings
        public_size = len(load_public(self.cfg, self.task))
        phase_index = self.phases().index(r.phase)
        indices = public_subset(s.public_samples_per_round, public_size, self.cfg.seed, phase_index, r.server_round)
        config = {
            SPLIT: PUBLIC,
            INDICES: indices,
            SERVER_ROUND: r.server_round,
            TRANSFER_EPOCHS: s.transfer_epochs,
            LOGITS_DTYPE: s.logits_dtype,
        }
        classes = self.task.num_classes
        messages = logits_queries(r.sampled, {**config, SOURCE: SOURCE_OWN})
        replies = yield Ask(
            messages, [logits_check(len(indices), classes, self.cfg.max_num_examples, s.logits_dtype)] * len(messages)
        )
        result = RoundResult({}, scores_previous=False)
        if not replies:
            return result
        agreed = logits_to_record(consensus([logits_from_record(x.content[LOGITS]) for x in replies]), s.logits_dtype)
        # Nodes can only compute logits on the built-in test set, which they build as the server does.
        report = self.cfg.server_test == "builtin" and r.test is not None
        digest = ConfigRecord(
            {**config, REPORT_TEST_LOGITS: report, TEMPERATURE: s.temperature, DIGEST_EPOCHS: s.digest_epochs}
        )
        messages = [
            Message(RecordDict({CONSENSUS: agreed, CONFIG: digest}), dst_node_id=x.node, message_type=TRAIN_DIGEST)
            for x in replies
        ]
        if report:
            check = logits_check(len(r.test), classes, self.cfg.max_num_examples, s.logits_dtype, TEST_LOGITS)
        else:

            def check(content):
                return screen_reply(content, None, self.cfg.max_num_examples)

        digested = yield Ask(messages, [check] * len(messages))
        if digested:
            result.metrics.update(reply_metrics([x.content for x in digested]))
        if report:
            test_logits: dict[str, list[torch.Tensor]] = {}
            for x in digested:
                test_logits.setdefault(self.architecture(x.node, r.phase), []).append(
                    logits_from_record(x.content[TEST_LOGITS])
                )
            result.scores = self.score_logits(test_logits, r.test)
        return result

    def score_logits(self, test_logits: dict[str, list[torch.Tensor]], test: Split) -> Scores:
        """Each architecture's mean (cross-entropy, accuracy) over its nodes' logits on the test inputs."""
        scores = {}
        for name, logits in test_logits.items():
            pairs = [
                (float(torch.nn.functional.cross_entropy(t, test.y)), int((t.argmax(1) == test.y).sum()) / len(test.y))
                for t in logits
            ]
            scores[name] = (statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs))
        return scores
