"""fedkd ClientApp: one handler per action, over common's data, models and loops."""

import hashlib
import json
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.config import RESUMABLE_CHANGES, RunConfig, parse_run_config
from common.data import ClientData, Split, dataset_shape, load_client_data, load_npz, load_public, load_server_testset
from common.feature_generator import FeatureGenerator, feature_width, regularised_loss
from common.loss import distillation_loss, soft_loss
from common.models import build_model, initial_model, load_record, logits_from_record, logits_to_record, to_record
from common.privacy import DPSGD, Ledger, noise_multiplier, sample_rate, spent_epsilon, steps_per_epoch
from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    CONFIG,
    CONSENSUS,
    DIGEST_LOSS,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE_INCOMING,
    GENERATOR,
    GENERATOR_LABELS,
    INDICES,
    LABEL_COUNTS,
    LOGITS,
    METRICS,
    MODEL,
    NAME,
    NODE,
    NUM_EXAMPLES,
    PRIVATE_EPOCHS,
    PROXIMAL_MU,
    PUBLIC,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_TEACHER,
    SPLIT,
    TEACHER,
    TEST_LOGITS,
    TRAIN_LOSS,
    Action,
)
from common.seeds import Stream, derive_seed
from common.training import LossFn, evaluate, predict_logits, train

# Several ClientApps share the cores in simulation; one thread each avoids oversubscription.
torch.set_num_threads(1)

LOCAL_TEACHER = "local-teacher"
OWN_MODEL = "own-model"
PRIVACY = "privacy"  # the node's DP ledger: its calibrated noise and what it has spent

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
    if "partition-id" not in config or "num-partitions" not in config:
        missing = "partition-id" if "partition-id" not in config else "num-partitions"
        raise ValueError(
            f"node config '{missing}' is missing; start the SuperNode with --node-config "
            "'data-path=\"/path/part.npz\"' or 'partition-id=<int> num-partitions=<int>'"
        )
    partition_id, num_partitions = (_whole(config, key) for key in ("partition-id", "num-partitions"))
    if num_partitions < 1:
        raise ValueError(f"node config 'num-partitions' = {num_partitions}; allowed: 1 or more")
    return partition_id, load_client_data(cfg, partition_id, num_partitions)


def _whole(config: dict, key: str) -> int:
    """An integer node-config value; bools, fractions and text are refused, not truncated."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise ValueError(f"node config '{key}' = {value!r}; allowed: a whole number")
    return int(value)


def _eval_metrics(cfg: RunConfig, model: torch.nn.Module, test: Split) -> dict[str, float]:
    """The model's counts on the local test split; none with DP on."""
    if cfg.dp_epsilon > 0:
        # The local test split is private data too, and these exact counts would release it unaccounted.
        return {}
    loss, correct = evaluate(model, test.x, test.y)
    return {EVAL_EXAMPLES: len(test), EVAL_CORRECT: correct, EVAL_LOSS_SUM: loss * len(test)}


def _train_kwargs(cfg: RunConfig, seed: int, epochs: int | None = None) -> dict:
    return {
        "epochs": epochs or cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "seed": seed,
    }


def _fit(
    msg: Message,
    context: Context,
    cfg: RunConfig,
    stream: int,
    data: ClientData,
    model_loss: Callable[[torch.nn.Module], LossFn] | None = None,
    **train_kwargs,
) -> Message:
    """Shared body of the weight-training handlers: score the incoming global model, train, reply.
    `model_loss` builds a loss that reads the model being trained (FedGen's, through its head)."""
    start = time.perf_counter()
    config = msg.content[CONFIG]
    name = str(config[MODEL])
    model = load_record(build_model(name, cfg.dataset), msg.content[ARRAYS])
    metrics = _eval_metrics(cfg, model, data.test) if config.get(EVALUATE_INCOMING, False) else {}
    seed = derive_seed(cfg.seed, Stream.LOCAL_TRAINING, zlib.crc32(name.encode()), int(config[SERVER_ROUND]), stream)
    if model_loss is not None:
        train_kwargs["loss_fn"] = model_loss(model)
    metrics[TRAIN_LOSS] = _train_private(cfg, msg, context, model, data, seed, **train_kwargs)
    metrics[NUM_EXAMPLES] = len(data.train)
    metrics.update(_privacy_metrics(cfg, context))
    metrics[CLIENT_SECONDS] = time.perf_counter() - start
    return Message(RecordDict({ARRAYS: to_record(model), METRICS: MetricRecord(metrics)}), reply_to=msg)


def _saved_path(context: Context, what: str) -> Path | None:
    """Where node config `state-dir` keeps this run's `what` across SuperNode restarts."""
    if "state-dir" not in context.node_config:
        return None
    return Path(str(context.node_config["state-dir"])) / f"run-{context.run_id}" / f"{what}.pt"


def _keep(context: Context, what: str, model: torch.nn.Module) -> None:
    """Hold `model` in the node's state, and in its state-dir when it has one."""
    context.state[what] = to_record(model)
    if saved := _saved_path(context, what):
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), saved.with_suffix(".tmp"))
        saved.with_suffix(".tmp").replace(saved)


def _restore(context: Context, what: str, model: torch.nn.Module) -> bool:
    """Load `what` into `model` from the node's state or state-dir; False if the node holds none."""
    if what in context.state.array_records:
        load_record(model, context.state[what])
        return True
    if (saved := _saved_path(context, what)) and saved.is_file():
        # The SuperNode restarted and lost context.state; its state-dir kept the model.
        model.load_state_dict(torch.load(saved, weights_only=True))
        context.state[what] = to_record(model)
        return True
    return False


def _ledger_path(cfg: RunConfig, context: Context) -> Path | None:
    """Where node config `state-dir` keeps the DP ledger: one file per run config, not per run id."""
    if "state-dir" not in context.node_config:
        return None
    # A resumed run has a new id but the same config (less RESUMABLE_CHANGES): it must spend from the same
    # ledger. So does a rerun of the same config, which spends this node's data again.
    settings = {k: v for k, v in cfg.model_dump(mode="json", by_alias=True).items() if k not in RESUMABLE_CHANGES}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(str(context.node_config["state-dir"])) / f"privacy-{digest}.json"


def _held_ledger(cfg: RunConfig, context: Context) -> dict | None:
    """The ledger the node's state or state-dir holds, as JSON data; None before its first DP training."""
    if PRIVACY in context.state.config_records:
        return json.loads(str(context.state[PRIVACY][PRIVACY]))
    if (saved := _ledger_path(cfg, context)) and saved.is_file():
        # A restarted SuperNode, or a resumed run (a new run id, a fresh context.state): state-dir kept what the node has spent.
        return json.loads(saved.read_text())
    return None


def _private_epochs(config: ConfigRecord) -> int:
    """The run's horizon of private training the server sent (`private-epochs`); a clear error without it."""
    if PRIVATE_EPOCHS not in config:
        raise ValueError(
            f"message config '{PRIVATE_EPOCHS}' is missing with run config 'dp-epsilon' > 0: the ServerApp "
            "sends it with every message of a DP run; it must run the same fedkd version as this node"
        )
    return int(config[PRIVATE_EPOCHS])


def _ledger(cfg: RunConfig, context: Context, data: ClientData, private_epochs: int) -> Ledger:
    """The node's DP ledger: the one it holds, else a new one whose noise spends `dp-epsilon` over
    `private_epochs` epochs of its private data (the most it may train in the run)."""
    if (held := _held_ledger(cfg, context)) is None:
        n = len(data.train)
        steps = private_epochs * steps_per_epoch(n, cfg.batch_size)
        held = {
            "noise_multiplier": noise_multiplier(cfg.dp_epsilon, cfg.dp_delta, sample_rate(n, cfg.batch_size), steps),
            "history": [],
        }
    return Ledger(
        cfg.dp_epsilon,
        cfg.dp_delta,
        cfg.dp_max_grad_norm,
        held["noise_multiplier"],
        [tuple(step) for step in held["history"]],
    )


def _keep_ledger(cfg: RunConfig, context: Context, ledger: Ledger) -> None:
    """Hold the ledger in the node's state, and in its state-dir when it has one."""
    text = json.dumps({"noise_multiplier": ledger.noise_multiplier, "history": ledger.history})
    context.state[PRIVACY] = ConfigRecord({PRIVACY: text})
    if saved := _ledger_path(cfg, context):
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_text(text)
        saved.with_suffix(".tmp").replace(saved)


def _train_private(
    cfg: RunConfig,
    msg: Message,
    context: Context,
    model: torch.nn.Module,
    data: ClientData,
    seed: int,
    epochs: int | None = None,
    **train_kwargs,
) -> float:
    """`train` on the node's private training data: DP-SGD charged to its ledger when `dp-epsilon` > 0."""
    if cfg.dp_epsilon == 0:
        return train(model, data.train.x, **_train_kwargs(cfg, seed, epochs), **train_kwargs)
    ledger = _ledger(cfg, context, data, _private_epochs(msg.content[CONFIG]))
    try:
        privacy = DPSGD(ledger, derive_seed(cfg.seed, Stream.DP_NOISE, seed))
        return train(model, data.train.x, **_train_kwargs(cfg, seed, epochs), **train_kwargs, privacy=privacy)
    finally:
        # Kept even when training fails midway: its steps were charged before the first one.
        _keep_ledger(cfg, context, ledger)


def _privacy_metrics(cfg: RunConfig, context: Context) -> dict[str, float]:
    """The ε this node has spent, for the reply; nothing when DP is off."""
    if cfg.dp_epsilon == 0:
        return {}
    held = _held_ledger(cfg, context)
    return {DP_EPSILON: spent_epsilon([tuple(step) for step in held["history"]], cfg.dp_delta) if held else 0.0}


def _local_teacher(cfg: RunConfig, msg: Message, context: Context, stream: int, data: ClientData) -> torch.nn.Module:
    """The node's teacher: the global teacher the server sent once, optionally fine-tuned here."""
    teacher = build_model(cfg.teacher_model, cfg.dataset)
    if TEACHER in msg.content.array_records:
        load_record(teacher, msg.content[TEACHER])
        if cfg.teacher_finetune_epochs > 0:
            seed = derive_seed(cfg.seed, Stream.TEACHER_FINETUNE, stream)
            _train_private(cfg, msg, context, teacher, data, seed, cfg.teacher_finetune_epochs, targets=(data.train.y,))
        _keep(context, LOCAL_TEACHER, teacher)
    elif not _restore(context, LOCAL_TEACHER, teacher):
        raise RuntimeError(
            "this node holds no local teacher and the message carried none "
            "(the server sends it again the next time it samples this node)"
        )
    return teacher


def _own_model(cfg: RunConfig, msg: Message, context: Context, stream: int, data: ClientData) -> torch.nn.Module:
    """FedMD's model of this node, which never leaves it: created on first use by transfer
    learning (public data, then private data), then kept between rounds."""
    name = cfg.node_model(context.node_config)
    model = build_model(name, cfg.dataset)
    if _restore(context, OWN_MODEL, model):
        return model
    model = initial_model(name, cfg.dataset, derive_seed(cfg.seed, Stream.OWN_MODEL, stream))
    if cfg.transfer_epochs > 0:
        public = load_public(cfg)
        train(
            model,
            public.x,
            (public.y,),
            **_train_kwargs(cfg, derive_seed(cfg.seed, Stream.TRANSFER, stream), cfg.transfer_epochs),
        )
    _train_private(
        cfg, msg, context, model, data, derive_seed(cfg.seed, Stream.OWN_TRAINING, stream), targets=(data.train.y,)
    )
    _keep(context, OWN_MODEL, model)
    return model


def _inputs(cfg: RunConfig, config: ConfigRecord) -> torch.Tensor:
    """The inputs a message names: rows of the public data."""
    if config[SPLIT] != PUBLIC:
        raise ValueError(f"message config '{SPLIT}' = {config[SPLIT]!r}; allowed: {PUBLIC!r}")
    return load_public(cfg).x[torch.as_tensor(list(config[INDICES]), dtype=torch.long)]


@app.train(Action.SUPERVISED)
def train_supervised(msg: Message, context: Context) -> Message:
    """Train the global model of the message's architecture on local labels (teacher phase, FedAvg, FedDF),
    with FedProx's proximal term when the config carries `proximal-mu`."""
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    mu = float(msg.content[CONFIG].get(PROXIMAL_MU, 0.0))
    return _fit(msg, context, cfg, stream, data, targets=(data.train.y,), proximal_mu=mu)


@app.train(Action.FEDGEN)
def train_fedgen(msg: Message, context: Context) -> Message:
    """FedGen: train the global model on local labels, regularised by the generator once the server sends it;
    the reply counts the node's examples of each class, which the server fits the generator to."""
    cfg = parse_run_config(context.run_config)
    if cfg.dp_epsilon > 0:
        raise ValueError(
            "strategy 'fedgen' reports label counts that DP-SGD does not protect; run it with dp-epsilon 0"
        )
    stream, data = _node_data(cfg, context)
    config = msg.content[CONFIG]
    loss = None
    if GENERATOR in msg.content.array_records:
        gen = FeatureGenerator(
            dataset_shape(cfg.dataset)[1], [feature_width(str(config[MODEL]), cfg.dataset)], cfg.seed
        )
        gen.load_state_dict(msg.content[GENERATOR].to_torch_state_dict(), strict=True)
        server_round = int(config[SERVER_ROUND])
        # The loss reads the head of the model _fit trains, so it is built for that model, below.
        loss = partial(
            regularised_loss,
            gen=gen,
            labels=list(config[GENERATOR_LABELS]),
            alpha=cfg.fedgen_alpha,
            beta=cfg.fedgen_beta,
            server_round=server_round,
            seed=derive_seed(cfg.seed, Stream.FEDGEN_SAMPLES, server_round, stream),
        )
    reply = _fit(msg, context, cfg, stream, data, targets=(data.train.y,), model_loss=loss)
    counts = torch.bincount(data.train.y, minlength=dataset_shape(cfg.dataset)[1])
    reply.content[METRICS][LABEL_COUNTS] = [int(c) for c in counts]
    return reply


@app.train(Action.DISTIL)
def train_distil(msg: Message, context: Context) -> Message:
    """Two-stage phase 2: distil the global student from the local teacher on local data."""
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    teacher = _local_teacher(cfg, msg, context, stream, data)
    # The teacher is frozen, so its logits are computed once, not every batch.
    soft = predict_logits(teacher, data.train.x)
    loss = partial(distillation_loss, temperature=cfg.temperature, alpha=cfg.alpha)
    return _fit(msg, context, cfg, stream, data, targets=(soft, data.train.y), loss_fn=loss)


@app.train(Action.DIGEST)
def train_digest(msg: Message, context: Context) -> Message:
    """FedMD: digest (distil toward the consensus on its public inputs), then revisit (train on local data)."""
    start = time.perf_counter()
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    config = msg.content[CONFIG]
    model = _own_model(cfg, msg, context, stream, data)
    server_round = int(config[SERVER_ROUND])
    consensus = logits_from_record(msg.content[CONSENSUS])
    digest = train(
        model,
        _inputs(cfg, config),
        (consensus,),
        loss_fn=partial(soft_loss, temperature=cfg.temperature),
        **_train_kwargs(cfg, derive_seed(cfg.seed, Stream.DIGEST, server_round, stream), cfg.digest_epochs),
    )
    revisit = _train_private(
        cfg,
        msg,
        context,
        model,
        data,
        derive_seed(cfg.seed, Stream.REVISIT, server_round, stream),
        targets=(data.train.y,),
    )
    _keep(context, OWN_MODEL, model)
    metrics = {
        **_eval_metrics(cfg, model, data.test),
        NUM_EXAMPLES: len(data.train),
        TRAIN_LOSS: revisit,
        DIGEST_LOSS: digest,
        CLIENT_SECONDS: time.perf_counter() - start,
        **_privacy_metrics(cfg, context),
    }
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if config.get(REPORT_TEST_LOGITS, False):
        content[TEST_LOGITS] = logits_to_record(predict_logits(model, load_server_testset(cfg).x), cfg.logits_dtype)
    return Message(content, reply_to=msg)


@app.query(Action.LOGITS)
def query_logits(msg: Message, context: Context) -> Message:
    """Logits on the inputs the query names, of the local teacher (ensemble teacher) or the node's own model (FedMD)."""
    cfg = parse_run_config(context.run_config)
    stream, data = _node_data(cfg, context)
    config = msg.content[CONFIG]
    if config[SOURCE] == SOURCE_TEACHER:
        model = _local_teacher(cfg, msg, context, stream, data)
    else:
        model = _own_model(cfg, msg, context, stream, data)
    logits = predict_logits(model, _inputs(cfg, config))
    # Logits of a DP-trained model on public inputs are post-processing: they cost no ε.
    metrics = MetricRecord({NUM_EXAMPLES: len(data.train), **_privacy_metrics(cfg, context)})
    return Message(RecordDict({LOGITS: logits_to_record(logits, cfg.logits_dtype), METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Evaluate a global model of the message's architecture on the local test split."""
    cfg = parse_run_config(context.run_config)
    test = _node_data(cfg, context)[1].test
    model = load_record(build_model(str(msg.content[CONFIG][MODEL]), cfg.dataset), msg.content[ARRAYS])
    metrics = _eval_metrics(cfg, model, test)
    metrics[NUM_EXAMPLES] = len(test)
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(Action.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    """Report a stable name, for the server's seeded sampling, and this node's architecture."""
    cfg = parse_run_config(context.run_config)
    info = {NAME: node_name(context), MODEL: cfg.node_model(context.node_config)}
    return Message(RecordDict({NODE: ConfigRecord(info)}), reply_to=msg)
