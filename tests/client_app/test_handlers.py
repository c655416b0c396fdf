"""The ClientApp's handlers called directly, through the real ClientApp router."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client_app.actions.fedmd import OWN_MODEL
from client_app.actions.two_stage import LOCAL_TEACHER
from client_app.app import app
from common.config import parse_run_config
from common.data import builtin_task, load_client_data
from common.feature_generator import FeatureGenerator
from common.models import build_model, initial_model, load_record, logits_from_record, logits_to_record, to_record
from common.protocol import (
    ALPHA,
    ARRAYS,
    CONFIG,
    CONSENSUS,
    DIGEST_EPOCHS,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE,
    EVALUATE_INCOMING,
    FINETUNE_EPOCHS,
    GENERATOR,
    GENERATOR_ALPHA,
    GENERATOR_BETA,
    GENERATOR_LABELS,
    INDICES,
    LABEL_COUNTS,
    LOGITS,
    LOGITS_ARRAY,
    LOGITS_DTYPE,
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
    TEACHER_MODEL,
    TEMPERATURE,
    TEST_LOGITS,
    TRAIN_DIGEST,
    TRAIN_SUPERVISED,
    TRANSFER_EPOCHS,
    Action,
    message_type,
)
from common.protocol import TEACHER as TEACHER_RECORD
from common.task import INPUT_SHAPE, NUM_CLASSES
from common.training import evaluate, predict_logits

TASK = builtin_task("synthetic").to_config()  # what the ServerApp sends with every message
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
TRAIN_DISTIL = message_type(MessageType.TRAIN, Action.DISTILL)
TRAIN_FEDGEN = message_type(MessageType.TRAIN, Action.FEDGEN)

# The strategies' settings each message type carries, at the defaults of pyproject.toml.
TEACHER_SETTINGS = {TEACHER_MODEL: TEACHER, FINETUNE_EPOCHS: 0}
SETTINGS = {
    TRAIN_DISTIL: {**TEACHER_SETTINGS, TEMPERATURE: 3.0, ALPHA: 0.5},
    TRAIN_FEDGEN: {GENERATOR_ALPHA: 1.0, GENERATOR_BETA: 1.0},
}
TEACHER_QUERY = {SOURCE: SOURCE_TEACHER, SPLIT: PUBLIC, **TEACHER_SETTINGS, LOGITS_DTYPE: "float32"}
OWN_QUERY = {SOURCE: SOURCE_OWN, SPLIT: PUBLIC, TRANSFER_EPOCHS: 5, LOGITS_DTYPE: "float32"}
DIGEST_SETTINGS = {TEMPERATURE: 3.0, DIGEST_EPOCHS: 10, TRANSFER_EPOCHS: 5, LOGITS_DTYPE: "float32"}


def message(action, arrays, server_round=2, evaluate_incoming=True, model=None, teacher=None, settings=None):
    """A message of type `action` with the settings of its strategy; `settings` override them."""
    model = model or (TEACHER if action == TRAIN_SUPERVISED else STUDENT)
    config = {SERVER_ROUND: server_round, EVALUATE_INCOMING: evaluate_incoming, MODEL: model, **TASK}
    config.update({**SETTINGS.get(action, {}), **(settings or {})})
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
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    student = to_record(initial_model(STUDENT, "synthetic", 42))
    app(message(TRAIN_DISTIL, student, teacher=teacher, settings={FINETUNE_EPOCHS: 3}), context)
    tuned = load_record(build_model(TEACHER, "synthetic"), context.state[LOCAL_TEACHER])
    start = load_record(build_model(TEACHER, "synthetic"), teacher)
    assert evaluate(tuned, DATA.train.x, DATA.train.y)[1] > evaluate(start, DATA.train.x, DATA.train.y)[1] + 40


def test_pure_distillation_pulls_the_student_towards_the_teacher(context):
    teacher_model = initial_model(TEACHER, "synthetic", 42)
    student = to_record(initial_model(STUDENT, "synthetic", 42))
    reply = app(message(TRAIN_DISTIL, student, teacher=to_record(teacher_model), settings={ALPHA: 1.0}), context)
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


def test_identify_reports_the_partition_and_the_architecture(context):
    reply = app(message(QUERY_IDENTIFY, ArrayRecord()), context)
    # and what its data holds: the synthetic task's 32 features, labels up to 9
    assert dict(reply.content[NODE]) == {
        NAME: "partition-1",
        MODEL: "mlp-32",
        INPUT_SHAPE: [32],
        NUM_CLASSES: 10,
    }
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
    content = RecordDict({CONFIG: ConfigRecord({**TASK, **config})})
    if teacher is not None:
        content[TEACHER_RECORD] = teacher
    msg = Message(content, dst_node_id=7, message_type=QUERY_LOGITS)
    msg.metadata.__dict__["_message_id"] = f"q-{config.get('server-round', 0)}"
    return msg


def test_fedmd_logits_come_from_a_model_made_by_transfer_learning_and_kept(context):
    from common.data import load_public

    half = {**OWN_QUERY, LOGITS_DTYPE: "float16"}
    reply = app(query({**half, INDICES: [0, 5, 7], SERVER_ROUND: 1}), context)
    logits = reply.content[LOGITS][LOGITS_ARRAY]
    assert logits.dtype == "float16" and tuple(logits.shape) == (3, 10)
    own = load_record(build_model(STUDENT, "synthetic"), context.state[OWN_MODEL])
    public = load_public(CFG)
    expected = predict_logits(own, public.x[[0, 5, 7]])
    assert torch.allclose(logits_from_record(reply.content[LOGITS]), expected, atol=1e-2)
    # Trained on public data, then on the node's data: far above chance (0.1) on its local test split.
    assert evaluate(own, DATA.test.x, DATA.test.y)[1] / len(DATA.test) > 0.3
    assert dict(reply.content[METRICS]) == {NUM_EXAMPLES: 200}
    again = app(query({**half, INDICES: [0, 5, 7], SERVER_ROUND: 2}), context)
    assert torch.equal(logits_from_record(again.content[LOGITS]), logits_from_record(reply.content[LOGITS]))


def digest_message(consensus, indices):
    config = {SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: 1, REPORT_TEST_LOGITS: True, **DIGEST_SETTINGS}
    msg = Message(
        RecordDict({CONSENSUS: logits_to_record(consensus, "float32"), CONFIG: ConfigRecord({**TASK, **config})}),
        dst_node_id=7,
        message_type=TRAIN_DIGEST,
    )
    msg.metadata.__dict__["_message_id"] = "digest"
    return msg


def test_fedmd_digest_moves_the_own_model_toward_the_consensus(context):
    from common.data import load_public

    indices = list(range(100))
    app(query({**OWN_QUERY, INDICES: indices, SERVER_ROUND: 1}), context)
    before = load_record(build_model(STUDENT, "synthetic"), context.state[OWN_MODEL])
    x = load_public(CFG).x[indices]
    consensus = torch.zeros(100, 10)
    consensus[:, 3] = 8.0  # everyone agrees on class 3
    reply = app(digest_message(consensus, indices), context)
    after = load_record(build_model(STUDENT, "synthetic"), context.state[OWN_MODEL])
    share_of_3 = [float((predict_logits(m, x).argmax(1) == 3).float().mean()) for m in (before, after)]
    assert share_of_3[1] > share_of_3[0]
    assert tuple(reply.content[TEST_LOGITS][LOGITS_ARRAY].shape) == (1000, 10)
    assert reply.content[METRICS][NUM_EXAMPLES] == 200


def test_local_teacher_logits_for_the_ensemble_teacher(context):
    teacher = initial_model(TEACHER, "synthetic", 42)
    reply = app(
        query({**TEACHER_QUERY, INDICES: [1, 2], SERVER_ROUND: 1}, teacher=to_record(teacher)),
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


def test_a_query_for_inputs_other_than_the_public_data_is_refused(context):
    teacher = to_record(initial_model(TEACHER, "synthetic", 42))
    with pytest.raises(Exception, match="message config 'split' = 'server-test'; allowed: 'public'"):
        app(
            query({**TEACHER_QUERY, SPLIT: "server-test", INDICES: [1, 2], SERVER_ROUND: 1}, teacher=teacher),
            context,
        )


def test_fedgen_trains_plainly_until_the_generator_comes_then_learns_from_it_and_counts_its_labels(context):
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
    context.run_config["dp-epsilon"] = 3.0
    expected = (
        "run config 'dp-epsilon' = 3.0: strategy 'fedgen' reports each node's label counts in the clear, which "
        "sample-level DP does not cover; allowed: 0 with fedgen"
    )
    with pytest.raises(ValueError) as refused:
        app(message(TRAIN_FEDGEN, to_record(initial_model(STUDENT, "synthetic", 42))), context)
    assert str(refused.value) == expected


def student_record():
    return to_record(initial_model(STUDENT, "synthetic", 42))


def teacher_record():
    return to_record(initial_model(TEACHER, "synthetic", 42))


def fedgen_with_generator():
    msg = message(TRAIN_FEDGEN, student_record())
    msg.content[GENERATOR] = ArrayRecord(FeatureGenerator(10, [32], seed=5).for_width(32))
    msg.content[CONFIG][GENERATOR_LABELS] = [0, 3]
    return msg


# Complete messages of each type, and a setting each needs: without it, the node refuses the message.
TEACHER_LOGITS, OWN_LOGITS = f"{QUERY_LOGITS} of the teacher", f"{QUERY_LOGITS} of the own model"
COMPLETE = {
    TRAIN_DISTIL: lambda: message(TRAIN_DISTIL, student_record(), teacher=teacher_record()),
    TEACHER_LOGITS: lambda: query({**TEACHER_QUERY, INDICES: [1], SERVER_ROUND: 1}, teacher=teacher_record()),
    OWN_LOGITS: lambda: query({**OWN_QUERY, INDICES: [1], SERVER_ROUND: 1}),
    TRAIN_DIGEST: lambda: digest_message(torch.zeros(3, 10), [0, 1, 2]),
    TRAIN_FEDGEN: fedgen_with_generator,
    EVALUATE: lambda: message(EVALUATE, student_record()),
}
MISSING = [
    (TRAIN_DISTIL, TEACHER_MODEL),
    (TRAIN_DISTIL, FINETUNE_EPOCHS),
    (TRAIN_DISTIL, TEMPERATURE),
    (TRAIN_DISTIL, ALPHA),
    (TEACHER_LOGITS, TEACHER_MODEL),
    (TEACHER_LOGITS, FINETUNE_EPOCHS),
    (TEACHER_LOGITS, LOGITS_DTYPE),
    (OWN_LOGITS, TRANSFER_EPOCHS),
    (OWN_LOGITS, LOGITS_DTYPE),
    (TRAIN_DIGEST, TEMPERATURE),
    (TRAIN_DIGEST, DIGEST_EPOCHS),
    (TRAIN_DIGEST, TRANSFER_EPOCHS),
    (TRAIN_DIGEST, LOGITS_DTYPE),
    (TRAIN_FEDGEN, GENERATOR_ALPHA),
    (TRAIN_FEDGEN, GENERATOR_BETA),
    (EVALUATE, MODEL),
]


def test_the_complete_messages_are_answered(context):
    for name, build in COMPLETE.items():
        assert not app(build(), context).has_error(), name


@pytest.mark.parametrize("name, key", MISSING, ids=[f"{name}-{key}" for name, key in MISSING])
def test_a_setting_missing_from_the_message_is_refused_naming_the_key_and_the_message_type(context, name, key):
    msg = COMPLETE[name]()
    del msg.content[CONFIG][key]
    expected = (
        f"message config '{key}' is missing from {msg.metadata.message_type}: the ServerApp sends it; "
        "it must run the same fedkd version as this node"
    )
    with pytest.raises(ValueError) as refused:
        app(msg, context)
    assert str(refused.value) == expected
