"""two-stage's rounds driven by hand: the teacher's FedAvg, then the students' distillation with the final teacher
sent only to nodes that may not hold it; the ensemble-teacher round on the server."""

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from common.models import initial_model, logits_to_record, to_record
from common.protocol import (
    ALPHA,
    ARRAYS,
    CONFIG,
    FINETUNE_EPOCHS,
    INDICES,
    LOGITS,
    LOGITS_DTYPE,
    METRICS,
    MODEL,
    NUM_EXAMPLES,
    QUERY_LOGITS,
    SOURCE,
    SOURCE_TEACHER,
    TEACHER,
    TEACHER_MODEL,
    TEMPERATURE,
    TRAIN_SUPERVISED,
    message_type,
)
from server_app.round import Phase
from tests.server_app.helpers import drive, round_input, strategy, trained, values, weights

NODES = {n: (f"node-{n}", "mlp-32") for n in range(1, 6)}
RAW = {
    "two-stage.num-teacher-rounds": 2,
    "num-student-rounds": 3,
    "two-stage.teacher-model": "mlp-64",
    "two-stage.temperature": 2.0,
    "two-stage.alpha": 0.25,
    "two-stage.teacher-finetune-epochs": 1,
}
TEACHER_PHASE, STUDENT_PHASE = Phase("teacher", 2, teacher=True), Phase("student", 3)


def answering(nodes):
    """Nodes `nodes` reply to a training message; the others do not."""
    return lambda m: trained([1.0, 1.0], 5) if m.metadata.dst_node_id in nodes else None


def test_the_teacher_phase_trains_the_runs_teacher_model_by_fedavg(task_identity):
    two_stage = strategy("two-stage", NODES, **RAW)
    assert two_stage.phases() == (TEACHER_PHASE, STUDENT_PHASE)
    start = {"mlp-64": weights(0.0, 0.0)}
    result, (ask,), _ = drive(
        two_stage.round(round_input([1, 2], start, phase=TEACHER_PHASE)),
        lambda m: {1: trained([1.0, 2.0], 1), 2: trained([3.0, 4.0], 1)}[m.metadata.dst_node_id],
    )
    assert all(m.metadata.message_type == TRAIN_SUPERVISED for m in ask.messages)
    assert [m.content[CONFIG][MODEL] for m in ask.messages] == ["mlp-64", "mlp-64"]
    assert all(TEACHER not in m.content for m in ask.messages)
    np.testing.assert_allclose(values(result.globals["mlp-64"]), [2.0, 3.0])


def test_the_final_teacher_is_resent_only_to_nodes_that_may_have_lost_it(task_identity):
    two_stage = strategy("two-stage", NODES, **RAW)
    teacher = weights(7.0)
    start = two_stage.initial(STUDENT_PHASE, [1, 2, 3, 4], {"mlp-64": teacher})
    assert two_stage.final_teacher is teacher and list(start) == ["mlp-32"]
    start = {"mlp-32": weights(0.0, 0.0)}

    def sent_teacher(sampled, replying, server_round):
        _, (ask,), _ = drive(
            two_stage.round(round_input(sampled, start, phase=STUDENT_PHASE, server_round=server_round)),
            answering(replying),
        )
        return [m.metadata.dst_node_id for m in ask.messages if TEACHER in m.content], ask

    # Round 1: no node holds it yet; 1 and 2 reply, 3 fails (and may have lost it).
    got, ask = sent_teacher([1, 2, 3], {1, 2}, 1)
    assert got == [1, 2, 3] and values(ask.messages[0].content[TEACHER]) == [7.0]
    assert ask.messages[0].metadata.message_type == message_type("train", "distill")
    assert {k: ask.messages[0].content[CONFIG][k] for k in (TEACHER_MODEL, FINETUNE_EPOCHS, TEMPERATURE, ALPHA)} == {
        TEACHER_MODEL: "mlp-64",
        FINETUNE_EPOCHS: 1,
        TEMPERATURE: 2.0,
        ALPHA: 0.25,
    }
    assert two_stage.holds_teacher == {1, 2}
    # Round 2: 1 holds it; 3 and 4 get it; 4 replies, 3 fails again.
    got, _ = sent_teacher([1, 3, 4], {1, 4}, 2)
    assert got == [3, 4] and two_stage.holds_teacher == {1, 2, 4}
    # Round 3: only 3; 2 failing now loses its claim, 4 was not asked and keeps it.
    got, _ = sent_teacher([2, 3, 4], {3, 4}, 3)
    assert got == [3] and two_stage.holds_teacher == {1, 3, 4}


def test_the_ensemble_teacher_round_distills_the_students_on_the_server(task_identity):
    raw = {
        **RAW,
        "two-stage.ensemble-teacher": True,
        "two-stage.public-samples-per-round": 20,
        "two-stage.distill-steps": 2,
        "two-stage.logits-dtype": "float16",
    }
    two_stage = strategy("two-stage", NODES, **raw)
    two_stage.initial(STUDENT_PHASE, [1, 2], {"mlp-64": weights(7.0)})
    start = {"mlp-32": to_record(initial_model("mlp-32", "digits", 1))}

    def logits(m):
        if m.metadata.dst_node_id == 3:
            return None
        rows = np.zeros((20, 10), dtype=np.float32)
        rows[:, m.metadata.dst_node_id] = 5.0
        return RecordDict(
            {LOGITS: logits_to_record(torch.as_tensor(rows), "float16"), METRICS: MetricRecord({NUM_EXAMPLES: 1})}
        )

    result, (ask,), _ = drive(two_stage.round(round_input([1, 2, 3], start, phase=STUDENT_PHASE)), logits)
    assert all(m.metadata.message_type == QUERY_LOGITS for m in ask.messages)
    config = ask.messages[0].content[CONFIG]
    assert (config[SOURCE], config[LOGITS_DTYPE], len(config[INDICES])) == (SOURCE_TEACHER, "float16", 20)
    assert all(values(m.content[TEACHER]) == [7.0] for m in ask.messages)
    assert ARRAYS not in ask.messages[0].content
    assert two_stage.holds_teacher == {1, 2}
    assert set(result.metrics) == {"distill-steps", "distill-validation-start", "distill-validation-best"}
    assert result.metrics["distill-steps"] <= 2 and not result.scores_previous
    assert list(result.globals) == ["mlp-32"]
    # Nothing back: the students stay.
    empty, _, _ = drive(two_stage.round(round_input([1], start, phase=STUDENT_PHASE)), lambda m: None)
    assert empty.globals == start and empty.metrics == {}


@pytest.mark.parametrize("value", ["mlp-0", "resnet"])
def test_an_unknown_teacher_model_is_refused(value):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match=r"run config 'two-stage.teacher-model' = "):
        strategy("two-stage", **{"two-stage.teacher-model": value})
