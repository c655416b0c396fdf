"""FedDF's round driven by hand: grouped FedAvg, then each group distilled on the public inputs toward the
ensemble of every received model."""

from flwr.app import MetricRecord, RecordDict

from common.models import initial_model, to_record
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from tests.server_app.helpers import drive, round_input, strategy

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "mlp-8")}


def test_a_round_averages_each_group_then_distills_every_group(task_identity):
    feddf = strategy("feddf", NODES, **{"feddf.distill-steps": 2, "feddf.public-samples-per-round": 16})
    models = {n: to_record(initial_model(NODES[n][1], "digits", n)) for n in NODES}
    start = {name: to_record(initial_model(name, "digits", 9)) for name in ("mlp-32", "mlp-8")}
    result, (ask,), _ = drive(
        feddf.round(round_input([1, 2, 3], start)),
        lambda m: RecordDict({ARRAYS: models[m.metadata.dst_node_id], METRICS: MetricRecord({NUM_EXAMPLES: 5})}),
    )
    assert len(ask.messages) == 3
    assert list(result.globals) == ["mlp-32", "mlp-8"]
    assert set(result.metrics) == {
        "clipped-updates",
        "distill-steps",
        "distill-validation-start",
        "distill-validation-best",
    }
    assert result.metrics["distill-steps"] <= 2
    # Early stopping keeps the weights best on the validation split, the start included.
    assert result.metrics["distill-validation-best"] <= result.metrics["distill-validation-start"]


def test_no_replies_no_distillation(task_identity):
    feddf = strategy("feddf", NODES)
    start = {"mlp-32": to_record(initial_model("mlp-32", "digits", 9))}
    result, _, _ = drive(feddf.round(round_input([1, 2], start)), lambda m: None)
    assert result.globals == start and result.metrics == {"clipped-updates": 0}
