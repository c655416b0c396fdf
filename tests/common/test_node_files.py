"""Node-local .npz data files: export, loading, and every way a file can be wrong."""

import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import DataError, export_partitions, load_client_data, load_npz, load_test_npz, main

CFG = parse_run_config({"dataset": "digits", "partitioner": "iid"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    export_partitions(CFG, 3, out)
    return out


def test_export_writes_the_partitions_and_the_server_test_set(exported):
    files = sorted(p.name for p in exported.iterdir())
    assert files == ["part-0.npz", "part-1.npz", "part-2.npz", "server-test.npz"]
    loaded = load_npz(str(exported / "part-1.npz"), CFG, stream=1)
    direct = load_client_data(CFG, 1, 3)
    assert torch.equal(loaded.train.x, direct.train.x) and torch.equal(loaded.test.y, direct.test.y)
    assert len(load_test_npz(str(exported / "server-test.npz"), CFG)) == 360


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
    a = load_npz(str(tmp_path / "d.npz"), CFG, stream=5)
    b = load_npz(str(tmp_path / "d.npz"), CFG, stream=5)
    assert len(a.train) == 40 and len(a.test) == 10 and torch.equal(a.test.x, b.test.x)


def write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


GOOD_X = np.zeros((5, 64), dtype=np.float32)
GOOD_Y = np.arange(5)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": GOOD_Y}, "lacks ['x']; it has ['y']"),
        ({"x": GOOD_X[:, :10], "y": GOOD_Y}, "'x' has shape [5, 10]; expected (samples, 64)"),
        ({"x": GOOD_X, "y": GOOD_Y[:4]}, "'y' has shape [4]; expected (5,)"),
        ({"x": np.full((5, 64), np.nan, dtype=np.float32), "y": GOOD_Y}, "'x' must hold finite numbers"),
        ({"x": GOOD_X, "y": GOOD_Y + 8}, "'y' holds labels 8..12; allowed: 0 to 9"),
        ({"x": GOOD_X, "y": -GOOD_Y}, "allowed: 0 to 9"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(np.float32)}, "'y' must hold integer labels, found float32"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, "holds no samples"),
        ({"x": GOOD_X, "y": GOOD_Y, "x_test": GOOD_X[:, :3], "y_test": GOOD_Y}, "'x_test' has shape [5, 3]"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, arrays, message):
    path = write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_npz(path, CFG, stream=0)
    assert message in str(err.value) and "bad.npz" in str(err.value)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(str(tmp_path / "nope.npz"), CFG, 0)
    good = write(tmp_path / "good.npz", x=GOOD_X, y=GOOD_Y)
    data = open(good, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="is not a readable .npz file"):
        load_npz(str(tmp_path / "cut.npz"), CFG, 0)


def test_single_class_partition_still_loads(tmp_path):
    path = write(tmp_path / "one.npz", x=GOOD_X, y=np.full(5, 3))
    assert set(load_npz(path, CFG, 0).train.y.tolist()) == {3}
