"""Node-local .npz data files: export, loading, and every way a file can be wrong."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import DataError, export_partitions, load_client_data, load_node_file, load_test_file, main
from common.seeds import Stream, stream_rng

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
    with pytest.raises(SystemExit):
        main(["export", "--dataset", "cifar", "--num-partitions", "2", "--out", str(tmp_path)])


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
        ({"x": GOOD_X[:, :10], "y": GOOD_Y}, ": 'x' has shape [5, 10]; expected (samples, 64)"),
        ({"x": GOOD_X.reshape(5, 8, 8), "y": GOOD_Y}, ": 'x' has shape [5, 8, 8]; expected (samples, 64)"),
        ({"x": GOOD_X[0], "y": GOOD_Y}, ": 'x' has shape [64]; expected (samples, 64)"),
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
        ({"x": GOOD_X, "y": GOOD_Y + 8}, ": 'y' holds labels 8..12; allowed: 0 to 9"),
        ({"x": GOOD_X, "y": -GOOD_Y}, ": 'y' holds labels -4..0; allowed: 0 to 9"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, ": 'y' holds float32 values; allowed: integer labels 0 to 9"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, ": 'x' and 'y' hold no samples; allowed: 1 row or more"),
        (
            {"x": np.full((5, 64), "0.5"), "y": GOOD_Y},
            ": 'x' holds <U3 values; allowed: integer or floating-point numbers",
        ),
        ({"x": GOOD_X, "y": np.array(list("abcde"))}, ": 'y' holds <U1 values; allowed: integer labels 0 to 9"),
        (
            {"x": GOOD_X.astype(bool), "y": GOOD_Y},
            ": 'x' holds bool values; allowed: integer or floating-point numbers",
        ),
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
            ": 'x_test' has shape [5, 3]; expected (samples, 64)",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": with_value(np.nan), "y_test": GOOD_Y},
            ": 'x_test' holds non-finite values (1 NaN), the first in row 2; allowed: finite float32 numbers",
        ),
        (
            {"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X, "y_test": GOOD_Y + 10},
            ": 'y_test' holds labels 10..14; allowed: 0 to 9",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, arrays, reason):
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_node_file(path, CFG, stream=0)
    assert str(err.value) == f"data file {path!r} (node config 'data-path')" + reason


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
    with pytest.raises(DataError) as err:
        load_node_file(str(tmp_path), CFG, 0)
    assert str(err.value) == f"data file {str(tmp_path)!r} (node config 'data-path') is not a file"
    np.save(tmp_path / "plain.npy", GOOD_X)
    for path in (truncated(tmp_path), str(tmp_path / "plain.npy")):
        with pytest.raises(DataError) as err:
            load_node_file(path, CFG, 0)
        assert str(err.value) == (
            f"data file {path!r} (node config 'data-path') is not a readable .npz file: "
            "not a zip archive (truncated, or another format)"
        )


def test_a_single_class_partition_loads(tmp_path):
    path = write(tmp_path / "one.npz", x=np.random.default_rng(0).random((20, 64)), y=np.full(20, 3))
    data = load_node_file(path, CFG, 0)
    assert set(data.train.y.tolist()) == set(data.test.y.tolist()) == {3}
    assert (len(data.train), len(data.test)) == (16, 4) and data.train.x.dtype == torch.float32


def test_an_empty_local_test_pair_is_allowed(tmp_path):
    path = write(tmp_path / "d.npz", x=GOOD_X, y=GOOD_Y, x_test=GOOD_X[:0], y_test=GOOD_Y[:0])
    data = load_node_file(path, CFG, 0)
    assert (len(data.train), len(data.test)) == (5, 0)


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"x": GOOD_X}, " lacks ['y']; it has ['x']; expected 'x', 'y'"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, ": 'x' and 'y' hold no samples; allowed: 1 row or more"),
        (
            {"x": with_value(np.inf), "y": GOOD_Y},
            ": 'x' holds non-finite values (1 Inf), the first in row 2; allowed: finite float32 numbers",
        ),
        ({"x": GOOD_X, "y": GOOD_Y + 6}, ": 'y' holds labels 6..10; allowed: 0 to 9"),
    ],
)
def test_a_malformed_server_test_file_is_refused_with_the_reason(tmp_path, arrays, reason):
    path = write(tmp_path / "test.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_test_file(path, CFG)
    assert str(err.value) == f"server test file {path!r} (run config 'server-test')" + reason


def test_a_missing_or_truncated_server_test_file_is_refused(tmp_path):
    where = f"server test file {str(tmp_path / 'nope.npz')!r} (run config 'server-test')"
    with pytest.raises(DataError) as err:
        load_test_file(str(tmp_path / "nope.npz"), CFG)
    assert str(err.value) == f"{where} does not exist"
    path = truncated(tmp_path)
    with pytest.raises(DataError) as err:
        load_test_file(path, CFG)
    assert str(err.value) == (
        f"server test file {path!r} (run config 'server-test') is not a readable .npz file: "
        "not a zip archive (truncated, or another format)"
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
