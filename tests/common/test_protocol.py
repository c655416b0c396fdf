"""The wire names: a changed value breaks the exchange with nodes that run an earlier version."""

from common import protocol, task


def test_message_types_records_and_keys_are_those_earlier_versions_use():
    names = {name: value for name, value in vars(protocol).items() if name.isupper()}
    assert names == {
        "ARRAYS": "arrays",
        "CONFIG": "config",
        "METRICS": "metrics",
        "SERVER_ROUND": "server-round",
        "MODEL": "model",
        "NUM_EXAMPLES": "num-examples",
        "TRAIN_LOSS": "train-loss",
        "CLIENT_SECONDS": "client-seconds",
        "DP_EPSILON": "dp-epsilon",
        "EVAL_EXAMPLES": "eval-examples",
        "EVAL_CORRECT": "eval-correct",
        "EVAL_LOSS_SUM": "eval-loss-sum",
        "TRAIN_SUPERVISED": "train.supervised",
        "EVALUATE_INCOMING": "evaluate-incoming",
        "PROXIMAL_MU": "proximal-mu",
        "PRIVATE_EPOCHS": "private-epochs",
        "TEACHER": "teacher",
        "GENERATOR": "generator",
        "GENERATOR_LABELS": "generator-labels",
        "LABEL_COUNTS": "label-counts",
        "QUERY_LOGITS": "query.logits",
        "TRAIN_DIGEST": "train.digest",
        "SPLIT": "split",
        "PUBLIC": "public",
        "INDICES": "indices",
        "SOURCE": "source",
        "SOURCE_TEACHER": "teacher",
        "SOURCE_OWN": "own",
        "LOGITS": "logits",
        "CONSENSUS": "consensus",
        "REPORT_TEST_LOGITS": "report-test-logits",
        "TEST_LOGITS": "test-logits",
        "DIGEST_LOSS": "digest-loss",
        "LOGITS_ARRAY": "logits",
        "QUERY_IDENTIFY": "query.identify",
        "NODE": "node",
        "NAME": "name",
        "DATA_ERROR": "data-error",
        "EVALUATE": "evaluate",
        # The strategies' settings that travel in messages.
        "TEACHER_MODEL": "teacher-model",
        "FINETUNE_EPOCHS": "finetune-epochs",
        "TEMPERATURE": "temperature",
        "ALPHA": "alpha",
        "GENERATOR_ALPHA": "generator-alpha",
        "GENERATOR_BETA": "generator-beta",
        "LOGITS_DTYPE": "logits-dtype",
        "TRANSFER_EPOCHS": "transfer-epochs",
        "DIGEST_EPOCHS": "digest-epochs",
    }


def test_the_task_keys_are_those_earlier_versions_use_and_clash_with_no_protocol_key():
    keys = {name: value for name, value in vars(task).items() if name.isupper() and isinstance(value, str)}
    assert keys == {
        "INPUT_SHAPE": "task-input-shape",
        "NUM_CLASSES": "task-num-classes",
        "MEAN": "task-mean",
        "STD": "task-std",
    }
    # They travel in the same CONFIG records as the protocol's keys.
    wire = {value for name, value in vars(protocol).items() if name.isupper() and isinstance(value, str)}
    assert not set(keys.values()) & wire
