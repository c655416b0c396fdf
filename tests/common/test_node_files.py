"""Node-local data files: export, loading, the layouts a file may have, and every way a file can be wrong.

Loading checks a file's layout, values and labels; whether its examples fit the run's task (shape, classes) is
Task.check's (the node's and the server's), tested here on what the files load."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import (
    DataError,
    builtin_task,
    export_partitions,
    load_client_data,
    load_node_file,
    load_test_file,
    main,
)
from common.seeds import Stream, stream_rng
from common.task import TaskError

CFG = parse_run_config({"dataset": "digits", "partitioner": "iid"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    export_partitions(CFG, 3, out)
    return out


def test_export_writes_the_partitions_and_the_server_test_set(exported):
    files = sorted(p.name for p in exported.iterdir())
    assert files == ["part-0.npz", "part-1.npz", "part-2.npz", "server-test.npz"]
    loaded = load_node_file(str(exported / "part-1.npz"), CFG, stream=1)
    direct = load_client_data(CFG, 1, 3)
    assert torch.equal(loaded.train.x, direct.train.x) and torch.equal(loaded.test.y, direct.test.y)
    assert len(load_test_file(str(exported / "server-test.npz"), CFG)) == 360


def test_export_command_line(tmp_path, capsys):
    main(["export", "--dataset", "synthetic", "--partitioner", "iid", "--num-partitions", "2", "--out", str(tmp_path)])
    assert "part-1.npz" in capsys.readouterr().out
    with np.load(tmp_path / "part-0.npz") as f:
        assert f["x"].shape == (200, 32) and f["x_test"].shape == (40, 32)
    # Any dataset is taken; one that cannot be loaded (no hub here) ends the command, naming it.
    with pytest.raises(SystemExit):
        main(["export", "--dataset", "cifar", "--num-partitions", "2", "--out", str(tmp_path)])
    assert "error: dataset 'cifar' cannot be loaded: " in capsys.readouterr().err


def test_without_a_test_pair_a_seeded_split_is_held_out(tmp_path):
    x, y = np.random.default_rng(0).random((50, 64), dtype=np.float32), np.arange(50) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a = load_node_file(str(tmp_path / "d.npz"), CFG, stream=5)
    b = load_node_file(str(tmp_path / "d.npz"), CFG, stream=5)
    assert len(a.train) == 40 and len(a.test) == 10 and torch.equal(a.test.x, b.test.x)


@pytest.mark.parametrize("rows, held_out", [(1, 0), (2, 1), (5, 3)])
def test_the_local_test_split_is_the_first_of_the_seeded_order_and_a_lone_sample_stays_in_train(
    tmp_path, rows, held_out
):
    cfg = parse_run_config({"dataset": "digits", "local-test-fraction": 0.6})
    np.savez(tmp_path / "d.npz", x=np.arange(rows * 64, dtype=np.float32).reshape(rows, 64), y=np.arange(rows))
    data = load_node_file(str(tmp_path / "d.npz"), cfg, stream=2)
    # round(rows x 0.6) rows held out: 1.2 -> 1 and 3.0 -> 3, but never a one-sample node's only row.
    order = stream_rng(cfg.seed, Stream.FILE_SPLIT, 2).permutation(rows).tolist()
    assert (data.test.y.tolist(), data.train.y.tolist()) == (order[:held_out], order[held_out:])
    assert torch.equal(data.test.x[:, 0], 64 * data.test.y.float())


def write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


GOOD_X = np.zeros((5, 64), dtype=np.float32)
GOOD_Y = np.arange(5)


def with_value(value, row=2, column=7, dtype=np.float32):
    x = GOOD_X.astype(dtype)
    x[row, column] = value
    return x


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"y": GOOD_Y}, " lacks ['x']; it has ['y']; expected 'x', 'y' and optionally 'x_test', 'y_test'"),
        (
            {"x": GOOD_X, "labels": GOOD_Y},
            " lacks ['y']; it has ['labels', 'x']; expected 'x', 'y' and optionally 'x_test', 'y_test'",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X},
            " has only one of 'x_test', 'y_test'; expected both (a local test set) or neither",
        ),
        (
            {"x": GOOD_X[0], "y": GOOD_Y},
            ": 'x' holds arrays of shape [64]; allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)",
        ),
        (
            {"x": np.zeros((5, 1, 8, 8, 1)), "y": GOOD_Y},
            ": 'x' holds arrays of shape [5, 1, 8, 8, 1]; allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)",
        ),
        (
            {"x": np.zeros((5, 2, 8, 5)), "y": GOOD_Y},
            ": 'x' holds arrays of shape [5, 2, 8, 5]: neither axis 1 nor axis 3 has 1, 3 or 4 channels; "
            "allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)",
        ),
        ({"x": GOOD_X, "y": GOOD_Y[:4]}, ": 'y' has shape [4]; expected (5,), one label per row of 'x'"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, ": 'y' has shape [5, 1]; expected (5,), one label per row of 'x'"),
        (
            {"x": np.full((5, 64), np.nan, dtype=np.float32), "y": GOOD_Y},
            ": 'x' holds non-finite values (320 NaN), the first in row 0; allowed: finite float32 numbers",
        ),
        (
            {"x": with_value(np.nan), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 NaN), the first in row 2; allowed: finite float32 numbers",
        ),
        (
            {"x": with_value(np.inf, row=4), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 Inf), the first in row 4; allowed: finite float32 numbers",
        ),
        (
            {"x": with_value(-np.inf, row=1), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 Inf), the first in row 1; allowed: finite float32 numbers",
        ),
        (
            {"x": with_value(1e300, row=3, dtype=np.float64), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 beyond float32's range), the first in row 3; "
            "allowed: finite float32 numbers",
        ),
        ({"x": GOOD_X, "y": -GOOD_Y}, ": 'y' holds label -4; allowed: class ids from 0"),
        (
            {"x": GOOD_X, "y": GOOD_Y.astype(np.float32)},
            ": 'y' holds float32 values; allowed: integer class ids from 0",
        ),
        ({"x": GOOD_X, "y": GOOD_Y.astype(bool)}, ": 'y' holds bool values; allowed: integer class ids from 0"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, ": 'x' and 'y' hold no samples; allowed: 1 row or more"),
        (
            {"x": np.full((5, 64), "0.5"), "y": GOOD_Y},
            ": 'x' holds <U3 values; allowed: integer or floating-point numbers",
        ),
        ({"x": GOOD_X, "y": np.array(list("abcde"))}, ": 'y' holds <U1 values; allowed: integer class ids from 0"),
        (
            {"x": GOOD_X.astype(complex), "y": GOOD_Y},
            ": 'x' holds complex128 values; allowed: integer or floating-point numbers",
        ),
        (
            {"x": GOOD_X.astype(object), "y": GOOD_Y},
            ": 'x' cannot be read (Object arrays cannot be loaded when allow_pickle=False); "
            "allowed: an array of numbers",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X[:, :3], "y_test": GOOD_Y},
            ": 'x_test' holds examples of shape (3,), 'x' of (64,)",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X.reshape(5, 1, 8, 8), "y_test": GOOD_Y},
            ": 'x_test' holds examples of shape (1, 8, 8), 'x' of (64,)",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X[:0], "y_test": np.zeros(0)},
            ": 'y_test' holds float64 values; allowed: integer class ids from 0",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": with_value(np.nan), "y_test": GOOD_Y},
            ": 'x_test' holds non-finite values (1 NaN), the first in row 2; allowed: finite float32 numbers",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X, "y_test": GOOD_Y - 5},
            ": 'y_test' holds label -5; allowed: class ids from 0",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, arrays, reason):
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_node_file(path, CFG, stream=0)
    assert str(err.value) == f"data file {path!r} (node config 'data-path')" + reason


@pytest.mark.parametrize(
    "x, shape",
    [
        (GOOD_X, (64,)),  # (N, F): a table, or an image task's pixels flat
        (GOOD_X.reshape(5, 8, 8), (1, 8, 8)),  # (N, H, W): grey images
        (GOOD_X.reshape(5, 8, 8, 1), (1, 8, 8)),  # (N, H, W, C)
        (GOOD_X.reshape(5, 1, 8, 8), (1, 8, 8)),  # (N, C, H, W)
        (np.arange(5 * 5 * 6 * 3, dtype=np.float32).reshape(5, 5, 6, 3), (3, 5, 6)),  # channels last, moved first
        (GOOD_X[:, :48].reshape(5, 3, 4, 4), (3, 4, 4)),  # channels first when both axes could be
    ],
)
def test_a_file_may_hold_any_layout_and_rows_stay_flat(tmp_path, x, shape):
    path = write(tmp_path / "d.npz", x=x, y=GOOD_Y, x_test=x, y_test=GOOD_Y)
    data = load_node_file(path, CFG, stream=0)
    assert data.train.example_shape == data.test.example_shape == shape
    assert data.train.x.shape == (5, int(np.prod(shape))) and data.train.x.dtype == torch.float32
    if x.ndim == 4 and x.shape[3] == 3:  # (N, H, W, C): each row is the image's (C, H, W) pixels
        assert torch.equal(data.train.x, torch.as_tensor(x.transpose(0, 3, 1, 2).reshape(5, -1)))
    # Flat rows of 64 and (1, 8, 8) images both fit the digits task.
    fits = builtin_task("digits").accepts(shape)
    assert fits == (shape in ((64,), (1, 8, 8)))


def test_8_bit_integers_are_scaled_to_the_unit_range_and_booleans_read_as_0_and_1(tmp_path):
    pixels = np.array([0, 51, 255], dtype=np.uint8)[np.arange(5 * 64) % 3].reshape(5, 8, 8)
    data = load_node_file(write(tmp_path / "u8.npz", x=pixels, y=GOOD_Y), CFG, stream=0)
    assert data.train.example_shape == (1, 8, 8) and torch.equal(
        data.train.x.unique(), torch.tensor([0.0, 51 / 255, 1.0])
    )
    flags = load_node_file(
        write(tmp_path / "b.npz", x=GOOD_X.astype(bool) | np.eye(5, 64, dtype=bool), y=GOOD_Y), CFG, 0
    )
    assert set(flags.train.x.flatten().tolist()) <= {0.0, 1.0} and flags.train.x.sum() > 0
    # Other integers are kept as they are, not scaled.
    wide = load_node_file(write(tmp_path / "i.npz", x=np.full((5, 64), 300, dtype=np.int32), y=GOOD_Y), CFG, 0)
    assert wide.train.x.max().item() == 300.0


DIGITS_WHERE = "node 'n''s data"


@pytest.mark.parametrize(
    "arrays, reason",
    [
        (
            {"x": GOOD_X[:, :10], "y": GOOD_Y},
            f"{DIGITS_WHERE} holds examples of shape (10,); the run's task has (1, 8, 8)",
        ),
        (
            {"x": np.zeros((5, 3, 8, 8), np.float32), "y": GOOD_Y},
            f"{DIGITS_WHERE} holds examples of shape (3, 8, 8); the run's task has (1, 8, 8)",
        ),
        (
            {"x": GOOD_X.reshape(5, 1, 4, 16), "y": GOOD_Y},
            f"{DIGITS_WHERE} holds examples of shape (1, 4, 16); the run's task has (1, 8, 8)",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y + 8},
            f"{DIGITS_WHERE} holds labels 8..12; the run's task has 10 classes (labels 0 to 9)",
        ),
    ],
)
def test_a_file_that_does_not_fit_the_runs_task_loads_and_the_task_refuses_it(tmp_path, arrays, reason):
    data = load_node_file(write(tmp_path / "d.npz", **arrays), CFG, stream=0)
    labels = torch.cat([data.train.y, data.test.y])
    with pytest.raises(TaskError) as err:
        builtin_task("digits").check(data.train.example_shape, labels, DIGITS_WHERE)
    assert str(err.value) == reason


def test_the_task_checks_a_local_test_sets_labels_too(tmp_path):
    path = write(tmp_path / "d.npz", x=GOOD_X, y=GOOD_Y, x_test=GOOD_X, y_test=GOOD_Y + 10)
    data = load_node_file(path, CFG, stream=0)
    digits = builtin_task("digits")
    digits.check(data.train.example_shape, data.train.y, "train")
    with pytest.raises(TaskError) as err:
        digits.check(data.test.example_shape, data.test.y, "the local test set")
    assert str(err.value) == "the local test set holds labels 10..14; the run's task has 10 classes (labels 0 to 9)"
    # A synthetic run's task takes flat rows of 32 only.
    with pytest.raises(TaskError, match=r"holds examples of shape \(64,\); the run's task has \(32,\)$"):
        builtin_task("synthetic").check(data.train.example_shape, data.train.y, "train")


def truncated(tmp_path) -> str:
    """A valid .npz cut to half its bytes, as an interrupted copy leaves it."""
    data = Path(write(tmp_path / "good.npz", x=GOOD_X, y=GOOD_Y)).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.npz")


def test_missing_truncated_and_foreign_files(tmp_path):
    where = f"data file {str(tmp_path / 'nope.npz')!r} (node config 'data-path')"
    with pytest.raises(DataError) as err:
        load_node_file(str(tmp_path / "nope.npz"), CFG, 0)
    assert str(err.value) == f"{where} does not exist"
    # A directory is read by `datasets`; one without data files is refused, naming the reason.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_node_file(str(tmp_path / "empty"), CFG, 0)
    assert str(err.value).startswith(
        f"data file {str(tmp_path / 'empty')!r} (node config 'data-path') cannot be read by `datasets`: "
        "EmptyDatasetError: "
    )
    path = truncated(tmp_path)
    with pytest.raises(DataError) as err:
        load_node_file(path, CFG, 0)
    assert str(err.value) == (
        f"data file {path!r} (node config 'data-path') is not a readable .npz file: "
        "not a zip archive (truncated, or another format)"
    )
    # An .npz renamed: neither an .npz nor a format `datasets` reads.
    np.save(tmp_path / "plain.npy", GOOD_X)
    path = str(tmp_path / "plain.npy")
    with pytest.raises(DataError) as err:
        load_node_file(path, CFG, 0)
    assert str(err.value) == (
        f"data file {path!r} (node config 'data-path'): {path!r}: a file of type '.npy'; "
        "allowed: .parquet, .csv, .json, .jsonl, .arrow"
    )


def test_a_csv_file_is_read_by_datasets_as_a_table(tmp_path):
    rows = "".join(f"{i},{i / 2},{i % 3}\n" for i in range(10))
    (tmp_path / "node.csv").write_text("a,b,label\n" + rows)
    data = load_node_file(str(tmp_path / "node.csv"), CFG, stream=4)
    # Every numeric column but the label's is a feature; 2 of the 10 rows are held out by (seed, stream).
    assert data.train.example_shape == (2,) and (len(data.train), len(data.test)) == (8, 2)
    order = stream_rng(CFG.seed, Stream.FILE_SPLIT, 4).permutation(10)
    assert data.test.x.tolist() == [[i, i / 2] for i in order[:2].tolist()]
    assert data.test.y.tolist() == [i % 3 for i in order[:2].tolist()]
    (tmp_path / "unlabelled.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"no label column among \['a', 'b'\]; name it with run config 'label-column'"):
        load_node_file(str(tmp_path / "unlabelled.csv"), CFG, stream=0)


def test_a_single_class_partition_loads(tmp_path):
    path = write(tmp_path / "one.npz", x=np.random.default_rng(0).random((20, 64)), y=np.full(20, 3))
    data = load_node_file(path, CFG, 0)
    assert set(data.train.y.tolist()) == set(data.test.y.tolist()) == {3}
    assert (len(data.train), len(data.test)) == (16, 4) and data.train.x.dtype == torch.float32


def test_an_empty_local_test_pair_is_allowed(tmp_path):
    path = write(tmp_path / "d.npz", x=GOOD_X, y=GOOD_Y, x_test=GOOD_X[:0], y_test=GOOD_Y[:0])
    data = load_node_file(path, CFG, 0)
    assert (len(data.train), len(data.test)) == (5, 0) and data.test.x.shape == (0, 64)
    images = write(
        tmp_path / "i.npz", x=GOOD_X.reshape(5, 8, 8), y=GOOD_Y, x_test=np.zeros((0, 8, 8)), y_test=GOOD_Y[:0]
    )
    data = load_node_file(images, CFG, 0)
    assert data.test.x.shape == (0, 64) and data.test.example_shape == data.train.example_shape == (1, 8, 8)


def test_a_built_in_client_with_an_empty_local_test_split_loads():
    cfg = parse_run_config({"dataset": "digits", "partitioner": "iid", "local-test-fraction": 0.001})
    data = load_client_data(cfg, 0, 10)
    assert len(data.test) == 0 and data.test.x.shape == (0, 64) and data.test.example_shape == (1, 8, 8)


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"x": GOOD_X}, " lacks ['y']; it has ['x']; expected 'x', 'y'"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, ": 'x' and 'y' hold no samples; allowed: 1 row or more"),
        (
            {"x": with_value(np.inf), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 Inf), the first in row 2; allowed: finite float32 numbers",
        ),
        ({"x": GOOD_X, "y": GOOD_Y - 1}, ": 'y' holds label -1; allowed: class ids from 0"),
        (
            {"x": GOOD_X.reshape(5, 2, 4, 8), "y": GOOD_Y},
            ": 'x' holds arrays of shape [5, 2, 4, 8]: neither axis 1 nor axis 3 has 1, 3 or 4 channels; "
            "allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)",
        ),
    ],
)
def test_a_malformed_server_test_file_is_refused_with_the_reason(tmp_path, arrays, reason):
    path = write(tmp_path / "test.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_test_file(path, CFG)
    assert str(err.value) == f"test file {path!r}" + reason


def test_a_server_test_file_beyond_the_runs_classes_loads_and_the_task_refuses_it(tmp_path):
    test = load_test_file(write(tmp_path / "test.npz", x=GOOD_X, y=GOOD_Y + 6), CFG)
    assert test.example_shape == (64,) and test.y.tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(TaskError) as err:
        builtin_task("digits").check(test.example_shape, test.y, "the server's test set")
    assert str(err.value) == "the server's test set holds labels 6..10; the run's task has 10 classes (labels 0 to 9)"


def test_a_missing_or_truncated_server_test_file_is_refused(tmp_path):
    where = f"test file {str(tmp_path / 'nope.npz')!r}"
    with pytest.raises(DataError) as err:
        load_test_file(str(tmp_path / "nope.npz"), CFG)
    assert str(err.value) == f"{where} does not exist"
    path = truncated(tmp_path)
    with pytest.raises(DataError) as err:
        load_test_file(path, CFG)
    assert str(err.value) == (
        f"test file {path!r} is not a readable .npz file: not a zip archive (truncated, or another format)"
    )


def node_data(node_config: dict):
    """What a ClientApp handler loads for a SuperNode started with `node_config`."""
    from flwr.app import Context, RecordDict

    from client_app.node import Node

    run_config = {"dataset": "digits", "partitioner": "iid"}
    node = Node.load(Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config))
    return node.stream, node.data


@pytest.mark.parametrize(
    "node_config, missing",
    [({}, "'partition-id'"), ({"num-partitions": 3}, "'partition-id'"), ({"partition-id": 0}, "'num-partitions'")],
)
def test_a_node_without_data_path_or_partition_says_how_to_start_it(node_config, missing):
    with pytest.raises(ValueError) as err:
        node_data(node_config)
    assert str(err.value) == (
        f"node config {missing} is missing; start the SuperNode with --node-config "
        "'data-path=\"/path/part.npz\"' or 'partition-id=<int> num-partitions=<int>'"
    )


def test_a_node_with_a_nonexistent_data_path_names_it(tmp_path):
    path = str(tmp_path / "absent" / "part-0.npz")
    with pytest.raises(DataError) as err:
        node_data({"data-path": path, "partition-id": 0, "num-partitions": 3})
    assert str(err.value) == f"data file {path!r} (node config 'data-path') does not exist"


@pytest.mark.parametrize("partition_id", [-1, 3, 10])
def test_an_out_of_range_partition_id_names_the_range(partition_id):
    with pytest.raises(ValueError) as err:
        load_client_data(CFG, partition_id, 3)
    assert str(err.value) == (
        f"node config 'partition-id' = {partition_id} is out of range; allowed: 0 to 2 (num-partitions = 3)"
    )
