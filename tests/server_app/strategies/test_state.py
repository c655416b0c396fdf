"""What strategies keep between rounds survives a checkpoint: the data-free methods' generators, two-stage's final
teacher, the server optimisers' moments."""

import random

import numpy as np
import torch
from flwr.app import ArrayRecord

from common.feature_generator import head, train_feature_generator
from common.models import initial_model, to_record
from server_app import checkpoint
from server_app.round import RoundResult
from server_app.settings import config_dump
from tests.server_app.helpers import drive, round_input, strategy, trained, values, weights


def through_a_checkpoint(strategy_, tmp_path) -> dict[str, ArrayRecord]:
    config = config_dump(strategy_.cfg, strategy_.settings)
    checkpoint.save(
        tmp_path,
        checkpoint.Checkpoint("student", 1, [], {}, random.Random(0).getstate(), config, strategy_.state()),
    )
    return checkpoint.load(tmp_path, config).strategy_state


DATAFREE = {"feddf-datafree.distill-steps": 5, "batch-size": 8}


def test_feddf_datafree_resumes_with_the_generator_it_trained(tmp_path):
    teachers = [initial_model("mlp-32", "digits", seed) for seed in (1, 2)]

    def next_round(datafree):
        result = RoundResult({"mlp-32": to_record(initial_model("mlp-32", "digits", 3))})
        batches, _ = datafree.distillation_data(teachers, result, round_input([], result.globals, server_round=2))
        return result.metrics["generator-loss"], batches("mlp-32")(0)

    trained_ = strategy("feddf-datafree", **DATAFREE)
    first = RoundResult({"mlp-32": to_record(initial_model("mlp-32", "digits", 3))})
    trained_.distillation_data(teachers, first, round_input([], first.globals, server_round=1))
    resumed, fresh = strategy("feddf-datafree", **DATAFREE), strategy("feddf-datafree", **DATAFREE)
    resumed.restore(through_a_checkpoint(trained_, tmp_path))
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained_.generator.state_dict().values(), resumed.generator.state_dict().values())
    )
    (loss, (x, y)), (resumed_loss, (resumed_x, resumed_y)) = next_round(trained_), next_round(resumed)
    assert loss == resumed_loss and torch.equal(x, resumed_x) and torch.equal(y, resumed_y)
    # A generator not restored starts over, and its round differs.
    assert next_round(fresh)[0] != loss


def test_two_stage_keeps_the_final_teacher_from_phase_one(tmp_path):
    teacher = to_record(initial_model("mlp-128x64", "digits", 5))
    two_stage = strategy("two-stage")
    assert two_stage.state() == {}
    teacher_phase, student_phase = two_stage.phases()
    two_stage.initial(student_phase, [], {"mlp-128x64": teacher})
    resumed = strategy("two-stage")
    resumed.restore(through_a_checkpoint(two_stage, tmp_path))
    assert resumed.final_teacher is not None
    got, want = resumed.final_teacher.to_torch_state_dict(), teacher.to_torch_state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_fedgen_resumes_with_its_generator_widths_and_labels(tmp_path):
    raw = {"fedgen.generator-steps": 5, "batch-size": 8}
    heads = [head(initial_model(name, "digits", 1)) for name in ("mlp-32", "cnn")]
    counts = torch.tensor([[5, 5, 0] + [0] * 7, [0, 4, 6] + [0] * 7])

    def next_round(fedgen):
        return train_feature_generator(
            fedgen.generator, heads, counts, steps=5, batch_size=8, learning_rate=0.01, diversity=1.0, seed=2
        )[0]

    trained_ = strategy("fedgen", **raw)
    assert trained_.labels == [] and trained_.generator.widths == []
    _, trained_.labels = train_feature_generator(
        trained_.generator, heads, counts, steps=5, batch_size=8, learning_rate=0.01, diversity=1.0, seed=1
    )
    resumed, fresh = strategy("fedgen", **raw), strategy("fedgen", **raw)
    resumed.restore(through_a_checkpoint(trained_, tmp_path))
    assert resumed.labels == [0, 1, 2] and resumed.generator.widths == [32, 128]
    assert all(torch.equal(trained_.generator.state_dict()[k], v) for k, v in resumed.generator.state_dict().items())
    loss = next_round(trained_)
    assert next_round(resumed) == loss and next_round(fresh) != loss


def optimiser_rounds(name, raw, tmp_path):
    """Round 1 of `name` over two groups, then round 2 by the strategy itself and by one resumed from its
    checkpointed state; the two round-2 models of each group."""
    nodes = {1: ("a", "mlp-32"), 2: ("b", "cnn")}
    first_replies = {1: trained([0.0, 1.0], 2), 2: trained([3.0], 1)}
    second_replies = {1: trained([-1.0, 3.0], 2), 2: trained([1.0], 1)}

    def step(s, globals_, replies, server_round):
        r = round_input([1, 2], globals_, server_round=server_round)
        return drive(s.round(r), lambda m: replies[m.metadata.dst_node_id])[0].globals

    original = strategy(name, nodes, **raw)
    first = step(original, {"mlp-32": weights(1.0, 2.0), "cnn": weights(4.0)}, first_replies, 1)
    resumed = strategy(name, nodes, **raw)
    resumed.restore(through_a_checkpoint(original, tmp_path))
    return step(original, first, second_replies, 2), step(resumed, first, second_replies, 2)


def test_fedavgm_resumes_with_each_groups_momentum(tmp_path, task_identity):
    went_on, resumed = optimiser_rounds("fedavgm", {}, tmp_path)
    # mlp-32: m = (1, 1), then 0.9 (1, 1) + ((0, 1) - (-1, 3)) = (1.9, -1.1); new = (0, 1) - m.
    np.testing.assert_allclose(values(resumed["mlp-32"]), [-1.9, 2.1], rtol=1e-6)
    # cnn: m = 1, then 0.9 + (3 - 1) = 2.9; new = 3 - 2.9.
    np.testing.assert_allclose(values(resumed["cnn"]), [0.1], rtol=1e-5)
    assert all(values(went_on[g]) == values(resumed[g]) for g in ("mlp-32", "cnn"))


def test_fedadam_resumes_with_each_groups_moments(tmp_path, task_identity):
    went_on, resumed = optimiser_rounds("fedadam", {"fedadam.server-learning-rate": 0.1}, tmp_path)
    assert all(values(went_on[g]) == values(resumed[g]) for g in ("mlp-32", "cnn"))
