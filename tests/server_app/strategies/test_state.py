"""What strategies keep between rounds survives a checkpoint: the data-free methods' generators, two-stage's final teacher."""

import random

import torch
from flwr.app import ArrayRecord

from common.config import parse_run_config
from common.feature_generator import head, train_feature_generator
from common.models import initial_model, to_record
from server_app import checkpoint
from server_app.sampling import NodeSampler
from server_app.strategies.base import Round
from server_app.strategies.feddf_datafree import FedDFDataFree
from server_app.strategies.fedgen import FedGen
from server_app.strategies.two_stage import TwoStage

CFG = parse_run_config({"strategy": "feddf-datafree", "datafree-steps": 5, "batch-size": 8})


def through_a_checkpoint(strategy, tmp_path) -> dict[str, ArrayRecord]:
    checkpoint.save(
        tmp_path,
        checkpoint.Checkpoint(
            "student",
            1,
            [],
            {},
            random.Random(0).getstate(),
            strategy.cfg.model_dump(mode="json", by_alias=True),
            strategy.state(),
        ),
    )
    return checkpoint.load(tmp_path, strategy.cfg).strategy_state


def test_feddf_datafree_resumes_with_the_generator_it_trained(tmp_path):
    teachers = [initial_model("mlp-32", "digits", seed) for seed in (1, 2)]

    def next_round(strategy):
        result = Round({"mlp-32": to_record(initial_model("mlp-32", "digits", 3))}, [])
        batches, _ = strategy.distillation_data(teachers, result, server_round=2)
        return result.metrics["generator-loss"], batches("mlp-32")(0)

    trained = FedDFDataFree(CFG, NodeSampler(1, 1))
    trained.distillation_data(
        teachers, Round({"mlp-32": to_record(initial_model("mlp-32", "digits", 3))}, []), server_round=1
    )
    resumed, fresh = FedDFDataFree(CFG, NodeSampler(1, 1)), FedDFDataFree(CFG, NodeSampler(1, 1))
    resumed.restore(through_a_checkpoint(trained, tmp_path))
    assert all(
        torch.equal(a, b)
        for a, b in zip(trained.generator.state_dict().values(), resumed.generator.state_dict().values())
    )
    (loss, (x, y)), (resumed_loss, (resumed_x, resumed_y)) = next_round(trained), next_round(resumed)
    assert loss == resumed_loss and torch.equal(x, resumed_x) and torch.equal(y, resumed_y)
    # A generator not restored starts over, and its round differs.
    assert next_round(fresh)[0] != loss


def test_two_stage_keeps_the_final_teacher_from_phase_one(tmp_path):
    teacher = to_record(initial_model("mlp-128x64", "digits", 5))
    strategy = TwoStage(parse_run_config({}), NodeSampler(1, 1))
    assert strategy.state() == {}
    strategy.final_teacher = teacher
    resumed = TwoStage(parse_run_config({}), NodeSampler(1, 1))
    resumed.restore(through_a_checkpoint(strategy, tmp_path))
    assert resumed.final_teacher is not None
    got, want = resumed.final_teacher.to_torch_state_dict(), teacher.to_torch_state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_fedgen_resumes_with_its_generator_widths_and_labels(tmp_path):
    cfg = parse_run_config({"strategy": "fedgen", "fedgen-generator-steps": 5, "batch-size": 8})
    heads = [head(initial_model(name, "digits", 1)) for name in ("mlp-32", "cnn")]
    counts = torch.tensor([[5, 5, 0] + [0] * 7, [0, 4, 6] + [0] * 7])

    def next_round(strategy):
        return train_feature_generator(
            strategy.generator, heads, counts, steps=5, batch_size=8, learning_rate=0.01, diversity=1.0, seed=2
        )[0]

    trained = FedGen(cfg, NodeSampler(1, 1))
    assert trained.labels == [] and trained.generator.widths == []
    _, trained.labels = train_feature_generator(
        trained.generator, heads, counts, steps=5, batch_size=8, learning_rate=0.01, diversity=1.0, seed=1
    )
    resumed, fresh = FedGen(cfg, NodeSampler(1, 1)), FedGen(cfg, NodeSampler(1, 1))
    resumed.restore(through_a_checkpoint(trained, tmp_path))
    assert resumed.labels == [0, 1, 2] and resumed.generator.widths == [32, 128]
    assert all(torch.equal(trained.generator.state_dict()[k], v) for k, v in resumed.generator.state_dict().items())
    loss = next_round(trained)
    assert next_round(resumed) == loss and next_round(fresh) != loss
