"""The ClientApp's handlers called directly, through the real ClientApp router."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client_app.app import LOCAL_TEACHER, app
from common.config import parse_run_config
from common.data import load_client_data
from common.models import build_model, initial_model, load_record, logits_from_record, logits_to_record, to_record
from common.protocol import (
    ARRAYS,
    CONFIG,
    CONSENSUS,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE,
    EVALUATE_INCOMING,
    INDICES,
    LOGITS,
    LOGITS_ARRAY,
    METRICS,
    MODEL,
    NAME,
    NODE,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    PUBLIC,
    QUERY_IDENTIFY,
    QUERY_LOGITS,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_OWN,
    SOURCE_TEACHER,
    SPLIT,
    TEST_LOGITS,
    TRAIN_DIGEST,
    TRAIN_DISTIL,
    TRAIN_SUPERVISED,
)
from common.protocol import TEACHER as TEACHER_RECORD
from common.training import evaluate, predict_logits

RUN_CONFIG = {"dataset": "synthetic", "partitioner": "iid", "local-epochs": 2}


@pytest.fixture
def context(task_identity):
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 4},
        state=RecordDict(),
        run_config=dict(RUN_CONFIG),
    )


TEACHER, STUDENT = "mlp-128x64", "mlp-32"


def message(action, arrays, server_round=2, evaluate_incoming=True, model=None, teacher=None):
    model = model or (TEACHER if action == TRAIN_SUPERVISED else STUDENT)
    config = {SERVER_ROUND: server_round, EVALUATE_INCOMING: evaluate_incoming, MODEL: model}
    content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(config)})
    if teacher is not None:
        content[TEACHER_RECORD] = teacher
    msg = Message(content, dst_node_id=7, message_type=action)
    msg.metadata.__dict__["_message_id"] = f"{action}-{server_round}"
    return msg


def weights(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


CFG = parse_run_config(RUN_CONFIG)
DATA = load_client_data(CFG, 1, 4)


def test_supervised_training_trains_and_scores_the_incoming_model(context):
    sent = to_record(initial_model(TEACHER, "synthetic", 42))
    reply = app(message(TRAIN_SUPERVISED, sent), context)
    metrics = reply.content[METRICS]
    assert metrics[NUM_EXAMPLES] == len(DATA.train) == 200
    _, correct = evaluate(load_record(build_model(TEACHER, "synthetic"), sent), DATA.test.x, DATA.test.y)
    assert metrics[EVAL_EXAMPLES] == 40 and metrics[EVAL_CORRECT] == correct
    got, before = weights(reply.content[ARRAYS]), weights(sent)
    assert got.keys() == before.keys() and all(got[k].shape == before[k].shape for k in got)
    assert any(not torch.equal(got[k], before[k]) for k in got)
    trained = load_record(build_model(TEACHER, "synthetic"), reply.content[ARRAYS])
    assert evaluate(trained, DATA.train.x, DATA.train.y)[1] > correct / 40 * 200


def test_training_is_reproducible_and_round_dependent(context):
    sent = to_record(initial_model(TEACHER, "synthetic", 42))
    a = weights(app(message(TRAIN_SUPERVISED, sent), context).content[ARRAYS])
    b = weights(app(message(TRAIN_SUPERVISED, sent), context).content[ARRAYS])
    c = weights(app(message(TRAIN_SUPERVISED, sent, server_round=3), context).content[ARRAYS])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_supervised_training_takes_fedprox_mu_from_the_message(context):
    sent = to_record(initial_model(TEACHER, "synthetic", 42))
    plain = weights(app(message(TRAIN_SUPERVISED, sent), context).content[ARRAYS])
    proximal = message(TRAIN_SUPERVISED, sent)
    proximal.content[CONFIG][PROXIMAL_MU] = 1.0
    held = weights(app(proximal, context).content[ARRAYS])
    start = weights(sent)

    def distance(w):
        return sum(float(((w[k] - start[k]) ** 2).sum()) for k in w) ** 0.5

    assert 0 < distance(held) < distance(plain)


def test_first_round_skips_the_fused_evaluation(context):
    reply = app(
        message(TRAIN_SUPERVISED, to_record(initial_model(TEACHER, "synthetic", 42)), evaluate_incoming=False), context
    )
    assert EVAL_EXAMPLES not in reply.content[METRICS]


def test_student_without_any_teacher_is_refused(context):
    with pytest.raises(Exception, match="holds no local teacher"):
        app(message(TRAIN_DISTIL, to_record(initial_model(STUDENT, "synthetic", 42))), context)


def test_student_keeps_the_sent_teacher_in_state_and_reuses_it(context):
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    student = to_record(initial_model(STUDENT, "synthetic", 42))
    first = app(message(TRAIN_DISTIL, student, teacher=teacher), context)
    stored = weights(context.state[LOCAL_TEACHER])
    assert all(torch.equal(stored[k], v) for k, v in weights(teacher).items())
    second = app(message(TRAIN_DISTIL, student), context)
    a, b = weights(first.content[ARRAYS]), weights(second.content[ARRAYS])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape == (32, 32)


def test_teacher_finetuning_adapts_the_local_teacher(context):
    context.run_config["teacher-finetune-epochs"] = 3
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    app(message(TRAIN_DISTIL, to_record(initial_model(STUDENT, "synthetic", 42)), teacher=teacher), context)
    tuned = load_record(build_model(TEACHER, "synthetic"), context.state[LOCAL_TEACHER])
    start = load_record(build_model(TEACHER, "synthetic"), teacher)
    assert evaluate(tuned, DATA.train.x, DATA.train.y)[1] > evaluate(start, DATA.train.x, DATA.train.y)[1] + 40


def test_pure_distillation_pulls_the_student_towards_the_teacher(context):
    context.run_config["alpha"] = 1.0
    teacher_model = initial_model(TEACHER, "synthetic", 42)
    student = to_record(initial_model(STUDENT, "synthetic", 42))
    reply = app(message(TRAIN_DISTIL, student, teacher=to_record(teacher_model)), context)
    target = torch.softmax(predict_logits(teacher_model, DATA.train.x) / 3.0, 1)

    def gap(record):
        logits = predict_logits(load_record(build_model(STUDENT, "synthetic"), record), DATA.train.x)
        return torch.nn.functional.kl_div(torch.log_softmax(logits / 3.0, 1), target, reduction="batchmean").item()

    assert gap(reply.content[ARRAYS]) < 0.5 * gap(student)


def test_evaluate_student_reports_counts(context):
    student = initial_model(STUDENT, "synthetic", 42)
    reply = app(message(EVALUATE, to_record(student)), context)
    loss, correct = evaluate(student, DATA.test.x, DATA.test.y)
    metrics = reply.content[METRICS]
    assert metrics[EVAL_CORRECT] == correct and metrics[NUM_EXAMPLES] == 40
    assert metrics[EVAL_LOSS_SUM] == pytest.approx(loss * 40, rel=1e-5)


def test_missing_partition_id_names_the_key(context):
    context.node_config.clear()
    with pytest.raises(Exception, match="node config 'partition-id' is missing"):
        app(message(TRAIN_SUPERVISED, to_record(initial_model(TEACHER, "synthetic", 42))), context)


def test_identify_reports_the_partition_and_the_architecture(context):
    reply = app(message(QUERY_IDENTIFY, ArrayRecord()), context)
    assert dict(reply.content[NODE]) == {NAME: "partition-1", MODEL: "mlp-32"}
    context.run_config["models"] = "mlp-8,mlp-16x16"
    assert app(message(QUERY_IDENTIFY, ArrayRecord()), context).content[NODE][MODEL] == "mlp-16x16"
    context.node_config["model"] = "mlp-64"
    assert app(message(QUERY_IDENTIFY, ArrayRecord()), context).content[NODE][MODEL] == "mlp-64"


def test_a_heterogeneous_node_trains_the_architecture_it_is_sent(context):
    sent = to_record(initial_model("mlp-16x16", "synthetic", 1))
    reply = app(message(TRAIN_SUPERVISED, sent, model="mlp-16x16"), context)
    assert [tuple(v.shape) for v in reply.content[ARRAYS].values()] == [
        (16, 32),
        (16,),
        (16, 16),
        (16,),
        (10, 16),
        (10,),
    ]


def query(config, teacher=None):
    content = RecordDict({CONFIG: ConfigRecord(config)})
    if teacher is not None:
        content[TEACHER_RECORD] = teacher
    msg = Message(content, dst_node_id=7, message_type=QUERY_LOGITS)
    msg.metadata.__dict__["_message_id"] = f"q-{config.get('server-round', 0)}"
    return msg


def test_fedmd_logits_come_from_a_model_made_by_transfer_learning_and_kept(context):
    from common.data import load_public

    context.run_config["logits-dtype"] = "float16"
    reply = app(query({SOURCE: SOURCE_OWN, SPLIT: PUBLIC, INDICES: [0, 5, 7], SERVER_ROUND: 1}), context)
    logits = reply.content[LOGITS][LOGITS_ARRAY]
    assert logits.dtype == "float16" and tuple(logits.shape) == (3, 10)
    own = load_record(build_model(STUDENT, "synthetic"), context.state["own-model"])
    public = load_public(CFG)
    expected = predict_logits(own, public.x[[0, 5, 7]])
    assert torch.allclose(logits_from_record(reply.content[LOGITS]), expected, atol=1e-2)
    # Trained on public data, then on the node's data: far above chance (0.1) on its local test split.
    assert evaluate(own, DATA.test.x, DATA.test.y)[1] / len(DATA.test) > 0.3
    assert dict(reply.content[METRICS]) == {NUM_EXAMPLES: 200}
    again = app(query({SOURCE: SOURCE_OWN, SPLIT: PUBLIC, INDICES: [0, 5, 7], SERVER_ROUND: 2}), context)
    assert torch.equal(logits_from_record(again.content[LOGITS]), logits_from_record(reply.content[LOGITS]))


def test_fedmd_digest_moves_the_own_model_toward_the_consensus(context):
    from common.data import load_public

    indices = list(range(100))
    app(query({SOURCE: SOURCE_OWN, SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: 1}), context)
    before = load_record(build_model(STUDENT, "synthetic"), context.state["own-model"])
    x = load_public(CFG).x[indices]
    consensus = torch.zeros(100, 10)
    consensus[:, 3] = 8.0  # everyone agrees on class 3
    config = {SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: 1, REPORT_TEST_LOGITS: True}
    msg = Message(
        RecordDict({CONSENSUS: logits_to_record(consensus, "float32"), CONFIG: ConfigRecord(config)}),
        dst_node_id=7,
        message_type=TRAIN_DIGEST,
    )
    msg.metadata.__dict__["_message_id"] = "digest"
    reply = app(msg, context)
    after = load_record(build_model(STUDENT, "synthetic"), context.state["own-model"])
    share_of_3 = [float((predict_logits(m, x).argmax(1) == 3).float().mean()) for m in (before, after)]
    assert share_of_3[1] > share_of_3[0]
    assert tuple(reply.content[TEST_LOGITS][LOGITS_ARRAY].shape) == (1000, 10)
    assert reply.content[METRICS][NUM_EXAMPLES] == 200


def test_local_teacher_logits_for_the_ensemble_teacher(context):
    teacher = initial_model(TEACHER, "synthetic", 42)
    reply = app(
        query({SOURCE: SOURCE_TEACHER, SPLIT: PUBLIC, INDICES: [1, 2], SERVER_ROUND: 1}, teacher=to_record(teacher)),
        context,
    )
    from common.data import load_public

    expected = predict_logits(teacher, load_public(CFG).x[[1, 2]])
    assert torch.allclose(logits_from_record(reply.content[LOGITS]), expected)


def test_state_dir_brings_the_teacher_back_after_a_restart(context, tmp_path):
    context.node_config["state-dir"] = str(tmp_path)
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    student = to_record(initial_model(STUDENT, "synthetic", 42))
    first = app(message(TRAIN_DISTIL, student, teacher=teacher), context)
    restarted = Context(
        run_id=1, node_id=7, node_config=dict(context.node_config), state=RecordDict(), run_config=dict(RUN_CONFIG)
    )
    second = app(message(TRAIN_DISTIL, student), restarted)
    a, b = weights(first.content[ARRAYS]), weights(second.content[ARRAYS])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run-1" / "local-teacher.pt").is_file()


def test_a_bad_data_file_is_refused_with_its_reason(context, tmp_path):
    import numpy as np

    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 32), dtype=np.float32), y=np.array([0, 1, 2, 99]))
    context.node_config.clear()
    context.node_config["data-path"] = str(tmp_path / "bad.npz")
    with pytest.raises(Exception, match=r"'y' holds labels 0..99; allowed: 0 to 9"):
        app(message(TRAIN_SUPERVISED, to_record(initial_model(TEACHER, "synthetic", 42))), context)


def test_data_path_nodes_are_named_by_their_file_or_name(context, tmp_path):
    context.node_config.clear()
    context.node_config["data-path"] = "/data/a.npz"
    assert app(message(QUERY_IDENTIFY, ArrayRecord()), context).content[NODE][NAME] == "/data/a.npz"
    context.node_config["name"] = "hospital-a"
    assert app(message(QUERY_IDENTIFY, ArrayRecord()), context).content[NODE][NAME] == "hospital-a"


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"partition-id": "abc", "num-partitions": 4}, "node config 'partition-id' = 'abc'; allowed: a whole number"),
        ({"partition-id": 1.5, "num-partitions": 4}, "node config 'partition-id' = 1.5; allowed: a whole number"),
        ({"partition-id": True, "num-partitions": 4}, "node config 'partition-id' = True; allowed: a whole number"),
        ({"partition-id": 0, "num-partitions": 0}, "node config 'num-partitions' = 0; allowed: 1 or more"),
        ({"partition-id": 0}, "node config 'num-partitions' is missing"),
    ],
)
def test_malformed_node_config_is_refused_with_what_is_allowed(context, config, expected):
    context.node_config.clear()
    context.node_config.update(config)
    with pytest.raises(Exception, match=expected.replace("(", r"\(").replace(")", r"\)")):
        app(message(TRAIN_SUPERVISED, to_record(initial_model(TEACHER, "synthetic", 42))), context)


def test_a_query_for_inputs_other_than_the_public_data_is_refused(context):
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    with pytest.raises(Exception, match="message config 'split' = 'server-test'; allowed: 'public'"):
        app(
            query({SOURCE: SOURCE_TEACHER, SPLIT: "server-test", INDICES: [1, 2], SERVER_ROUND: 1}, teacher=teacher),
            context,
        )


def test_fedgen_trains_plainly_until_the_generator_comes_then_learns_from_it_and_counts_its_labels(context):
    from common.feature_generator import FeatureGenerator
    from common.protocol import GENERATOR, GENERATOR_LABELS, LABEL_COUNTS, TRAIN_FEDGEN

    sent = to_record(initial_model(STUDENT, "synthetic", 42))
    plain = app(message(TRAIN_SUPERVISED, sent, model=STUDENT), context)
    first = app(message(TRAIN_FEDGEN, sent), context)
    # Without a generator (round 1) the node trains as train.supervised does, and counts its labels.
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(first.content[ARRAYS]).values(), weights(plain.content[ARRAYS]).values())
    )
    counts = first.content[METRICS][LABEL_COUNTS]
    assert (
        counts == torch.bincount(DATA.train.y, minlength=10).tolist()
        and sum(counts) == first.content[METRICS][NUM_EXAMPLES]
    )
    with_generator = message(TRAIN_FEDGEN, sent)
    with_generator.content[GENERATOR] = ArrayRecord(FeatureGenerator(10, [32, 128], seed=5).for_width(32))
    with_generator.content[CONFIG][GENERATOR_LABELS] = [0, 3]
    regularised = app(with_generator, context)
    assert not regularised.has_error(), regularised.error
    assert any(
        not torch.equal(a, b)
        for a, b in zip(weights(regularised.content[ARRAYS]).values(), weights(first.content[ARRAYS]).values())
    )


def test_fedgen_under_dp_is_refused_naming_why(context):
    from common.protocol import TRAIN_FEDGEN

    context.run_config["dp-epsilon"] = 3.0
    with pytest.raises(ValueError, match="strategy 'fedgen' reports label counts that DP-SGD does not protect"):
        app(message(TRAIN_FEDGEN, to_record(initial_model(STUDENT, "synthetic", 42))), context)
