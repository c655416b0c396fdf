"""The strategies' shared primitives against hand computations: groups, screening, clipping, metrics."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import parse_run_config
from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    CONFIG,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    LOGITS,
    LOGITS_ARRAY,
    METRICS,
    NUM_EXAMPLES,
    TEACHER,
    TRAIN_LOSS,
    TRAIN_SUPERVISED,
)
from server_app.sampling import NodeSampler
from server_app.strategies import STRATEGIES
from server_app.strategies.base import Round, Strategy, sum_eval_counts
from server_app.strategies.fedavg import FedAvgStudent
from server_app.strategies.two_stage import TwoStage
from server_app.transport import Exchange


def reply_from(node, arrays=None, error=None, **metrics):
    sent = Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type=TRAIN_SUPERVISED)
    sent.metadata.__dict__["_message_id"] = f"m{node}"
    if error:
        return Message(Error(code=1, reason=error), reply_to=sent)
    content = RecordDict({METRICS: MetricRecord({TRAIN_LOSS: 0.1, **metrics})})
    if arrays is not None:
        content[ARRAYS] = ArrayRecord({"w": Array(np.asarray(arrays, dtype=np.float32))})
    return Message(content, reply_to=sent)


def weights(*values):
    return ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))})


def strategy_with(nodes: dict[int, tuple[str, str]], cls=FedAvgStudent, **config) -> Strategy:
    """A strategy whose sampler knows `nodes`: id -> (name, architecture)."""
    sampler = NodeSampler(seed=1, timeout=1)
    sampler.names = {n: name for n, (name, _) in nodes.items()}
    sampler.models = {n: model for n, (_, model) in nodes.items()}
    return cls(parse_run_config(config), sampler)


def test_every_module_of_the_package_registers_its_strategy_under_its_file_name():
    import pkgutil

    import server_app.strategies as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in STRATEGIES.values()} == modules
    assert {name.replace("-", "_") for name in STRATEGIES} == modules
    assert all(STRATEGIES[name].name == name for name in STRATEGIES)


def test_the_server_refuses_an_unregistered_strategy_naming_the_registered_ones():
    from common.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_run_config({"strategy": "fedsgd"}, strategies=STRATEGIES)
    assert str(err.value) == (
        "run config 'strategy' = 'fedsgd': Value error, unknown strategy; allowed: "
        + ", ".join(repr(name) for name in STRATEGIES)
    )
    assert parse_run_config({"strategy": "fedprox"}, strategies=STRATEGIES).strategy == "fedprox"


def test_a_name_is_registered_once():
    from server_app.strategies import register

    with pytest.raises(ValueError, match="strategy name 'fedavg' is taken by FedAvgStudent"):
        register("fedavg")(FedAvgStudent)


def test_weights_are_averaged_only_within_an_architecture(task_identity):
    strategy = strategy_with({1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn")})
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9), "mlp-8": weights(5)}
    replies = [
        reply_from(1, [1.0, 2.0], **{NUM_EXAMPLES: 100}).content,
        reply_from(2, [3.0, 6.0], **{NUM_EXAMPLES: 300}).content,
        reply_from(3, [1.0, 1.0, 1.0], **{NUM_EXAMPLES: 7}).content,
    ]
    messages = [Message(c, dst_node_id=0, message_type=TRAIN_SUPERVISED) for c in replies]
    for node, m in zip((1, 2, 3), messages):
        m.metadata.__dict__["_src_node_id"] = node
    out = strategy.group_average("student", start, messages, Round(start, [1, 2, 3]))
    np.testing.assert_allclose(out["mlp-32"]["w"].numpy(), [2.5, 5.0])
    np.testing.assert_allclose(out["cnn"]["w"].numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out["mlp-8"]["w"].numpy(), [5.0])  # no replies: unchanged


def test_screen_rejects_bad_replies_with_reasons_and_orders_the_rest_by_name(task_identity):
    strategy = strategy_with(
        {1: ("zeta", "mlp-32"), 2: ("alpha", "mlp-32"), 3: ("beta", "mlp-32"), 4: ("gamma", "mlp-32")}
    )
    ex = Exchange(
        replies=[
            reply_from(1, [1.0, 1.0], **{NUM_EXAMPLES: 10}),
            reply_from(2, [2.0, 2.0], **{NUM_EXAMPLES: 10}),
            reply_from(3, [np.nan, 1.0], **{NUM_EXAMPLES: 10}),
            reply_from(4, error="crashed"),
        ]
    )
    result = Round({}, [1, 2, 3, 4], [ex])
    accepted = strategy.screen(ex, lambda node: weights(0, 0), result)
    assert [m.metadata.src_node_id for m in accepted] == [2, 1]  # alpha before zeta
    assert result.accepted == [2, 1]
    assert result.rejected == [{"node": 3, "reason": "reply rejected: 'w' holds NaN or Inf"}]
    assert {f["node"]: f["reason"] for f in result.failures()} == {
        4: "crashed",
        3: "reply rejected: 'w' holds NaN or Inf",
    }


def test_logit_replies_must_be_finite_rows_by_classes(task_identity):
    strategy = strategy_with({1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "mlp-32")})

    def logits_reply(node, logits):
        msg = reply_from(node, **{NUM_EXAMPLES: 5})
        msg.content[LOGITS] = ArrayRecord({LOGITS_ARRAY: Array(np.asarray(logits))})
        return msg

    ex = Exchange(
        replies=[
            logits_reply(1, np.zeros((4, 10), dtype=np.float16)),
            logits_reply(2, np.zeros((3, 10), dtype=np.float32)),
            logits_reply(3, np.full((4, 10), np.inf, dtype=np.float32)),
        ]
    )
    result = Round({}, [1, 2, 3], [ex])
    assert [m.metadata.src_node_id for m in strategy.screen_logits(ex, 4, result)] == [1]
    assert [r["reason"] for r in result.rejected] == [
        "reply rejected: logits are float32[3, 10], expected float[4, 10]",
        "reply rejected: logits hold NaN or Inf",
    ]


def test_clip_norm_bounds_each_update_before_averaging(task_identity):
    strategy = strategy_with({1: ("a", "mlp-32"), 2: ("b", "mlp-32")}, **{"clip-norm": 1.0})
    messages = [reply_from(1, [3.0, 4.0], **{NUM_EXAMPLES: 10}), reply_from(2, [0.6, 0.0], **{NUM_EXAMPLES: 10})]
    result = Round({}, [1, 2])
    out = strategy.group_average("student", {"mlp-32": weights(0, 0)}, messages, result)
    # (3, 4) has norm 5 and is scaled to (0.6, 0.8); (0.6, 0) is within the bound.
    np.testing.assert_allclose(out["mlp-32"]["w"].numpy(), [0.6, 0.4], rtol=1e-6)
    assert result.metrics["clipped-updates"] == 1


def test_sum_eval_counts_is_sample_weighted():
    records = [
        RecordDict(
            {
                METRICS: MetricRecord(
                    {
                        NUM_EXAMPLES: 100,
                        TRAIN_LOSS: 1.0,
                        EVAL_EXAMPLES: 10,
                        EVAL_CORRECT: 9,
                        EVAL_LOSS_SUM: 2.0,
                        CLIENT_SECONDS: 0.2,
                    }
                )
            }
        ),
        RecordDict(
            {
                METRICS: MetricRecord(
                    {
                        NUM_EXAMPLES: 300,
                        TRAIN_LOSS: 2.0,
                        EVAL_EXAMPLES: 30,
                        EVAL_CORRECT: 15,
                        EVAL_LOSS_SUM: 6.0,
                        CLIENT_SECONDS: 0.5,
                    }
                )
            }
        ),
    ]
    out = sum_eval_counts(records, NUM_EXAMPLES)
    assert out["federated-accuracy"] == pytest.approx(24 / 40)
    assert out["federated-loss"] == pytest.approx(8 / 40)
    assert out["train-loss"] == pytest.approx((100 * 1.0 + 300 * 2.0) / 400)
    assert out["client-seconds"] == pytest.approx(0.5)


def test_the_teacher_is_resent_only_to_nodes_that_may_have_lost_it():
    strategy = strategy_with({}, cls=TwoStage)
    strategy.final_teacher = weights(1)
    strategy.holds_teacher = {3, 4}
    strategy._track_teacher(Round({}, sent=[1, 2, 3], accepted=[1, 2]))
    # 1 and 2 now hold the teacher; 3 failed and may have lost it; 4 was not asked.
    assert strategy.holds_teacher == {1, 2, 4}
    assert strategy._teacher_for(4) == {} and strategy._teacher_for(3) == {TEACHER: strategy.final_teacher}


def test_public_subsets_follow_seed_phase_and_round():
    strategy = strategy_with({}, **{"public-samples-per-round": 5})
    a, b = strategy.public_subset(100, 3, "student"), strategy.public_subset(100, 4, "student")
    assert len(a) == 5 and a == sorted(set(a)) and a != b
    assert a == strategy_with({}, **{"public-samples-per-round": 5}).public_subset(100, 3, "student")
    assert strategy_with({}).public_subset(7, 1, "student") == list(range(7))


def test_too_few_usable_replies_stop_the_run_with_the_reasons():
    from server_app.rounds import RunAborted, _check_replies

    cfg = parse_run_config({"min-replies": 0.6})
    failures = [{"node": "a", "reason": "no reply before round-timeout"}, {"node": "b", "reason": "boom"}]
    with pytest.raises(RunAborted) as err:
        _check_replies(cfg, "teacher", 4, sent=5, accepted=2, failures=failures)
    assert "teacher round 4: 2 of 5 sampled nodes replied usably, min-replies = 0.6 needs 3" in str(err.value)
    assert "node a: no reply before round-timeout; node b: boom" in str(err.value)
    _check_replies(cfg, "teacher", 4, sent=5, accepted=3, failures=failures)


def test_screen_keeps_the_epsilon_each_accepted_node_reports_by_name(task_identity):
    strategy = strategy_with({1: ("zeta", "mlp-32"), 2: ("alpha", "mlp-32"), 3: ("beta", "mlp-32")})
    ex = Exchange(
        replies=[
            reply_from(1, [1.0, 1.0], **{NUM_EXAMPLES: 10, DP_EPSILON: 0.5}),
            reply_from(2, [2.0, 2.0], **{NUM_EXAMPLES: 10, DP_EPSILON: 1.25}),
            reply_from(3, [np.nan, 1.0], **{NUM_EXAMPLES: 10, DP_EPSILON: 9.0}),
        ]
    )
    result = Round({}, [1, 2, 3], [ex])
    strategy.screen(ex, lambda node: weights(0, 0), result)
    assert result.epsilon == {"zeta": 0.5, "alpha": 1.25}


@pytest.mark.parametrize(
    "name, config, epochs",
    [
        (
            "two-stage",
            {"num-teacher-rounds": 4, "num-student-rounds": 3, "local-epochs": 2, "teacher-finetune-epochs": 5},
            8 + 5 + 6,
        ),
        (
            "two-stage",
            {"num-teacher-rounds": 4, "num-student-rounds": 3, "local-epochs": 2, "ensemble-teacher": True},
            8,
        ),
        ("fedmd", {"num-student-rounds": 3, "local-epochs": 2}, 2 + 6),
        ("fedavg", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("fedprox", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("feddf", {"num-student-rounds": 3, "local-epochs": 2}, 6),
    ],
)
def test_each_strategy_plans_the_private_epochs_a_node_may_train(name, config, epochs):
    assert strategy_with({}, cls=STRATEGIES[name], **config).private_epochs() == epochs


def test_only_a_dp_run_tells_the_nodes_their_private_epochs(monkeypatch, task_identity):
    import server_app.strategies.base as base

    monkeypatch.setattr(base, "exchange", lambda grid, messages, timeout: Exchange())
    for dp, expected in ((0.0, None), (3.0, 6)):
        strategy = strategy_with({}, **{"num-student-rounds": 3, "local-epochs": 2, "dp-epsilon": dp})
        msg = Message(RecordDict({CONFIG: ConfigRecord({"a": 1})}), dst_node_id=1, message_type=TRAIN_SUPERVISED)
        strategy.send(None, [msg])
        assert msg.content[CONFIG].get("private-epochs") == expected
