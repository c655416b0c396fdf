"""The ClientApp's handlers called directly, through the real ClientApp router."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client_app.app import LOCAL_TEACHER, app
from common.config import parse_run_config
from common.data import load_client_data
from common.models import initial_model, load_record, make_model, to_record
from common.training import evaluate, predict_logits

RUN_CONFIG = {"dataset": "synthetic", "partitioner": "iid", "local-epochs": 2}


@pytest.fixture
def context(task_identity):
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 4},
        state=RecordDict(), run_config=dict(RUN_CONFIG),
    )


def message(action, arrays, server_round=2, evaluate_incoming=True, **extra):
    content = RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"server-round": server_round, "evaluate-incoming": evaluate_incoming}), **extra}
    )
    msg = Message(content, dst_node_id=7, message_type=action)
    msg.metadata.__dict__["_message_id"] = f"{action}-{server_round}"
    return msg


def weights(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


CFG = parse_run_config(RUN_CONFIG)
DATA = load_client_data(CFG, 1, 4)


def test_train_teacher_trains_and_scores_the_incoming_model(context):
    sent = to_record(initial_model(CFG, "teacher"))
    reply = app(message("train.teacher", sent), context)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(DATA.train) == 200
    _, correct = evaluate(load_record(make_model(CFG, "teacher"), sent), DATA.test.x, DATA.test.y)
    assert metrics["eval-examples"] == 40 and metrics["eval-correct"] == correct
    got, before = weights(reply.content["arrays"]), weights(sent)
    assert got.keys() == before.keys() and all(got[k].shape == before[k].shape for k in got)
    assert any(not torch.equal(got[k], before[k]) for k in got)
    trained = load_record(make_model(CFG, "teacher"), reply.content["arrays"])
    assert evaluate(trained, DATA.train.x, DATA.train.y)[1] > correct / 40 * 200


def test_training_is_reproducible_and_round_dependent(context):
    sent = to_record(initial_model(CFG, "teacher"))
    a = weights(app(message("train.teacher", sent), context).content["arrays"])
    b = weights(app(message("train.teacher", sent), context).content["arrays"])
    c = weights(app(message("train.teacher", sent, server_round=3), context).content["arrays"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_first_round_skips_the_fused_evaluation(context):
    reply = app(message("train.teacher", to_record(initial_model(CFG, "teacher")), evaluate_incoming=False), context)
    assert "eval-examples" not in reply.content["metrics"]


def test_student_without_any_teacher_is_refused(context):
    with pytest.raises(Exception, match="holds no local teacher"):
        app(message("train.student", to_record(initial_model(CFG, "student"))), context)


def test_student_keeps_the_sent_teacher_in_state_and_reuses_it(context):
    teacher = to_record(initial_model(CFG, "teacher"))
    student = to_record(initial_model(CFG, "student"))
    first = app(message("train.student", student, teacher=teacher), context)
    stored = weights(context.state[LOCAL_TEACHER])
    assert all(torch.equal(stored[k], v) for k, v in weights(teacher).items())
    second = app(message("train.student", student), context)
    a, b = weights(first.content["arrays"]), weights(second.content["arrays"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["0.weight"].shape == (32, 32)


def test_teacher_finetuning_adapts_the_local_teacher(context):
    context.run_config["teacher-finetune-epochs"] = 3
    teacher = to_record(initial_model(CFG, "teacher"))
    app(message("train.student", to_record(initial_model(CFG, "student")), teacher=teacher), context)
    tuned = load_record(make_model(CFG, "teacher"), context.state[LOCAL_TEACHER])
    start = load_record(make_model(CFG, "teacher"), teacher)
    assert evaluate(tuned, DATA.train.x, DATA.train.y)[1] > evaluate(start, DATA.train.x, DATA.train.y)[1] + 40


def test_pure_distillation_pulls_the_student_towards_the_teacher(context):
    context.run_config["alpha"] = 1.0
    teacher_model = initial_model(CFG, "teacher")
    student = to_record(initial_model(CFG, "student"))
    reply = app(message("train.student", student, teacher=to_record(teacher_model)), context)
    target = torch.softmax(predict_logits(teacher_model, DATA.train.x) / 3.0, 1)

    def gap(record):
        logits = predict_logits(load_record(make_model(CFG, "student"), record), DATA.train.x)
        return torch.nn.functional.kl_div(torch.log_softmax(logits / 3.0, 1), target, reduction="batchmean").item()

    assert gap(reply.content["arrays"]) < 0.5 * gap(student)


def test_evaluate_student_reports_counts(context):
    student = initial_model(CFG, "student")
    reply = app(message("evaluate.student", to_record(student)), context)
    loss, correct = evaluate(student, DATA.test.x, DATA.test.y)
    metrics = reply.content["metrics"]
    assert metrics["eval-correct"] == correct and metrics["num-examples"] == 40
    assert metrics["eval-loss-sum"] == pytest.approx(loss * 40, rel=1e-5)


def test_missing_partition_id_names_the_key(context):
    context.node_config.clear()
    with pytest.raises(Exception, match="node config 'partition-id' is missing"):
        app(message("train.teacher", to_record(initial_model(CFG, "teacher"))), context)


def test_identify_reports_the_partition(context):
    reply = app(message("query.identify", to_record(initial_model(CFG, "student"))), context)
    assert reply.content["node"]["name"] == "partition-1"


def test_state_dir_brings_the_teacher_back_after_a_restart(context, tmp_path):
    context.node_config["state-dir"] = str(tmp_path)
    teacher = to_record(initial_model(CFG, "teacher"))
    student = to_record(initial_model(CFG, "student"))
    first = app(message("train.student", student, teacher=teacher), context)
    restarted = Context(run_id=1, node_id=7, node_config=dict(context.node_config), state=RecordDict(),
                        run_config=dict(RUN_CONFIG))
    second = app(message("train.student", student), restarted)
    a, b = weights(first.content["arrays"]), weights(second.content["arrays"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run-1" / "local-teacher.pt").is_file()


def test_a_bad_data_file_is_refused_with_its_reason(context, tmp_path):
    import numpy as np

    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 32), dtype=np.float32), y=np.array([0, 1, 2, 99]))
    context.node_config.clear()
    context.node_config["data-path"] = str(tmp_path / "bad.npz")
    with pytest.raises(Exception, match=r"'y' holds labels 0..99; allowed: 0 to 9"):
        app(message("train.teacher", to_record(initial_model(CFG, "teacher"))), context)


def test_data_path_nodes_are_named_by_their_file_or_name(context, tmp_path):
    context.node_config.clear()
    context.node_config["data-path"] = "/data/a.npz"
    assert app(message("query.identify", ArrayRecord()), context).content["node"]["name"] == "/data/a.npz"
    context.node_config["name"] = "hospital-a"
    assert app(message("query.identify", ArrayRecord()), context).content["node"]["name"] == "hospital-a"
