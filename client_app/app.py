"""fedkd ClientApp: one handler per action, over common's data, models and loops."""

import time
import zlib
from functools import partial
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.config import RunConfig, parse_run_config
from common.data import ClientData, Split, load_client_data, load_npz
from common.loss import distillation_loss
from common.models import ROLES, load_record, make_model, to_record
from common.seeds import derive_seed
from common.training import evaluate, predict_logits, train

# Several ClientApps share the cores in simulation; one thread each avoids oversubscription.
torch.set_num_threads(1)

LOCAL_TEACHER = "local-teacher"

app = ClientApp()


def node_name(context: Context) -> str:
    """A name that stays the same across runs: node config `name`, else the partition or data file."""
    config = context.node_config
    if "name" in config:
        return str(config["name"])
    if "data-path" in config:
        return str(config["data-path"])
    if "partition-id" in config:
        return f"partition-{config['partition-id']}"
    return f"node-{context.node_id}"


def _node_data(cfg: RunConfig, context: Context) -> tuple[int, ClientData]:
    """(seed stream, local data) of this node: its data file, or its partition of a built-in dataset."""
    config = context.node_config
    if "data-path" in config:
        stream = zlib.crc32(node_name(context).encode())
        return stream, load_npz(str(config["data-path"]), cfg, stream)
    try:
        partition_id = int(config["partition-id"])
        num_partitions = int(config["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"node config {missing} is missing; start the SuperNode with --node-config "
            "'data-path=\"/path/part.npz\"' or 'partition-id=<int> num-partitions=<int>'"
        ) from None
    return partition_id, load_client_data(cfg, partition_id, num_partitions)


def _eval_metrics(model: torch.nn.Module, test: Split) -> dict[str, float]:
    loss, correct = evaluate(model, test.x, test.y)
    return {"eval-examples": len(test), "eval-correct": correct, "eval-loss-sum": loss * len(test)}


def _fit(
    role: str, msg: Message, cfg: RunConfig, stream: int, data: ClientData, **train_kwargs
) -> Message:
    """Shared body of the train handlers: evaluate the incoming global model, train, reply."""
    start = time.perf_counter()
    model = load_record(make_model(cfg, role), msg.content["arrays"])
    config = msg.content["config"]
    metrics = _eval_metrics(model, data.test) if config.get("evaluate-incoming", False) else {}
    seed = derive_seed(cfg.seed, 20, ROLES[role], int(config["server-round"]), stream)
    metrics["train-loss"] = train(
        model, data.train.x, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, seed=seed, **train_kwargs,
    )
    metrics["num-examples"] = len(data.train)
    metrics["client-seconds"] = time.perf_counter() - start
    return Message(RecordDict({"arrays": to_record(model), "metrics": MetricRecord(metrics)}), reply_to=msg)


def _local_teacher(
    cfg: RunConfig, msg: Message, context: Context, stream: int, data: ClientData
) -> torch.nn.Module:
    """The node's teacher: the global teacher the server sent once, optionally fine-tuned here."""
    teacher = make_model(cfg, "teacher")
    if "teacher" in msg.content.array_records:
        load_record(teacher, msg.content["teacher"])
        if cfg.teacher_finetune_epochs > 0:
            train(
                teacher, data.train.x, (data.train.y,), epochs=cfg.teacher_finetune_epochs,
                batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                seed=derive_seed(cfg.seed, 30, stream),
            )
        context.state[LOCAL_TEACHER] = to_record(teacher)
        if saved := _saved_teacher_path(context):
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), saved.with_suffix(".tmp"))
            saved.with_suffix(".tmp").replace(saved)
    elif LOCAL_TEACHER in context.state.array_records:
        load_record(teacher, context.state[LOCAL_TEACHER])
    elif (saved := _saved_teacher_path(context)) and saved.is_file():
        # The SuperNode restarted and lost context.state; its state-dir kept the teacher.
        teacher.load_state_dict(torch.load(saved, weights_only=True))
        context.state[LOCAL_TEACHER] = to_record(teacher)
    else:
        raise RuntimeError(
            "this node holds no local teacher and the message carried none "
            "(the server sends it again the next time it samples this node)"
        )
    return teacher


def _saved_teacher_path(context: Context) -> Path | None:
    """Where node config `state-dir` keeps this run's local teacher across SuperNode restarts."""
    if "state-dir" not in context.node_config:
        return None
    return Path(str(context.node_config["state-dir"])) / f"run-{context.run_id}" / "local-teacher.pt"


@app.train("teacher")
def train_teacher(msg: Message, context: Context) -> Message:
    """Phase 1: train the global teacher on local data."""
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    return _fit("teacher", msg, cfg, stream, data, targets=(data.train.y,))


@app.train("student")
def train_student(msg: Message, context: Context) -> Message:
    """Phase 2: distil the global student from the local teacher on local data."""
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    teacher = _local_teacher(cfg, msg, context, stream, data)
    # The teacher is frozen, so its logits are computed once, not every batch.
    soft = predict_logits(teacher, data.train.x)
    loss = partial(distillation_loss, temperature=cfg.temperature, alpha=cfg.alpha)
    return _fit("student", msg, cfg, stream, data, targets=(soft, data.train.y), loss_fn=loss)


def _evaluate(role: str, msg: Message, context: Context) -> Message:
    cfg = parse_run_config(context.run_config)
    test = _node_data(cfg, context)[1].test
    model = load_record(make_model(cfg, role), msg.content["arrays"])
    metrics = _eval_metrics(model, test)
    metrics["num-examples"] = len(test)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate("teacher")
def evaluate_teacher(msg: Message, context: Context) -> Message:
    """Evaluate the global teacher on the local test split."""
    return _evaluate("teacher", msg, context)


@app.evaluate("student")
def evaluate_student(msg: Message, context: Context) -> Message:
    """Evaluate the global student on the local test split."""
    return _evaluate("student", msg, context)


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    """Report a name that stays the same across runs, for the server's seeded sampling."""
    return Message(RecordDict({"node": ConfigRecord({"name": node_name(context)})}), reply_to=msg)
