"""Datasets from files on disk through flwr-datasets' FederatedDataset, node files of any layout, their task."""

import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import (
    DataError,
    builtin_task,
    dataset_task,
    load_client_data,
    load_node_file,
    load_public,
    load_server_testset,
    load_test_file,
)
from common.sources import SourceError, federated_kwargs, layout
from common.task import Task, TaskError
from tests import datasets_on_disk as disk


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return disk.image_parquet(tmp_path_factory.mktemp("parquet") / "images.parquet")


def cfg(dataset, **extra):
    return parse_run_config({"dataset": str(dataset), "partitioner": "iid", **extra})


def test_an_image_parquet_defines_the_task_and_is_split_into_test_public_and_partitions(parquet):
    run = cfg(parquet)
    test = load_server_testset(run)
    task = dataset_task(run, test)
    assert task == Task((3, 12, 10), 4)  # ClassLabel's 4 classes; images carry no standardisation
    # No test split: a stratified 20 % hold-out (48 of 240), a public slice of 10 % (24), the rest partitioned.
    assert len(test) == 48 and torch.bincount(test.y).tolist() == [12] * 4
    public = load_public(run, task)
    parts = [load_client_data(run, i, 3) for i in range(3)]
    assert len(public) == 24 and sum(len(p.train) + len(p.test) for p in parts) == 240 - 48 - 24
    # Pixels scaled to [0, 1] in (channels, height, width) order: the first image's red channel, row 0.
    pixels, labels = disk.images(240)
    x = parts[0].train.x.reshape(-1, 3, 12, 10)
    assert x.min() >= 0 and x.max() <= 1 and parts[0].train.shape == (3, 12, 10)
    match = [i for i in range(240) if np.allclose(pixels[i, 0, :, 0] / 255.0, x[0, 0, 0].numpy())]
    assert match and labels[match[0]] == parts[0].train.y[0]
    # Seeded: the same partitions again.
    assert torch.equal(load_client_data(run, 2, 3).train.x, parts[2].train.x)


def test_an_image_folder_and_a_save_to_disk_directory_with_a_test_split(tmp_path):
    import datasets

    folder = disk.image_folder(tmp_path / "folder", n=80)
    run = cfg(folder)
    test = load_server_testset(run)
    assert dataset_task(run, test) == Task((3, 12, 10), 4) and len(test) == 16
    splits = datasets.DatasetDict(
        {"train": disk.image_dataset(*disk.images(60, 1)), "test": disk.image_dataset(*disk.images(20, 2))}
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    run = cfg(tmp_path / "saved")
    test = load_server_testset(run)
    # The dataset's own test split, whole; the public slice from the training split.
    assert len(test) == 20 and torch.equal(test.y, torch.as_tensor(disk.images(20, 2)[1]))
    assert len(load_public(run)) == max(4, round(0.1 * 60))


def test_a_csv_table_with_seven_classes_is_standardised_by_the_servers_test_set(tmp_path):
    csv = disk.table_csv(tmp_path / "table.csv")
    run = cfg(csv)
    raw = load_server_testset(run)
    task = dataset_task(run, raw)
    assert task.input_shape == (5,) and task.num_classes == 7
    assert task.mean == pytest.approx(raw.x.double().mean(0).tolist(), rel=1e-6)
    scaled = raw.standardised(task).x
    assert scaled.mean(0).abs().max() < 1e-4 and (scaled.std(0, unbiased=False) - 1).abs().max() < 1e-4
    # The same affine map on a node's rows: column b (scale 1000 around 5000) lands near unit scale too.
    node = load_client_data(run, 0, 3).standardised(task)
    assert node.train.x[:, 1].abs().max() < 5
    assert dataset_task(cfg(csv, standardise=False), raw).mean == ()


def test_text_labels_become_class_ids_in_sorted_order(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"f": np.arange(60.0), "kind": ["pear", "apple", "fig"] * 20})
    frame.to_csv(tmp_path / "fruit.csv", index=False)
    run = cfg(tmp_path / "fruit.csv", **{"label-column": "kind"})
    test = load_server_testset(run)
    assert dataset_task(run, test).num_classes == 3
    # apple 0, fig 1, pear 2: row f = 0 is a pear.
    everything = torch.cat([test.x[:, 0], *(p.train.x[:, 0] for p in [load_client_data(run, 0, 1)])])
    labels = torch.cat([test.y, load_client_data(run, 0, 1).train.y])
    assert labels[everything == 0].tolist() == [2] and labels[everything == 1].tolist() == [0]


def test_natural_partitions_follow_a_column(tmp_path):
    pixels, labels = disk.images(90)
    writers = np.repeat([0, 1, 2], 30)
    disk.image_dataset(pixels, labels, writer_id=writers).to_parquet(str(tmp_path / "w.parquet"))
    run = cfg(tmp_path / "w.parquet", partitioner="natural", **{"partition-column": "writer_id"})
    sizes = [len(load_client_data(run, i, 3).train) + len(load_client_data(run, i, 3).test) for i in range(3)]
    # Every writer's images, less the server's test hold-out and the public slice taken before partitioning.
    assert sum(sizes) == 90 - 18 - 9 and all(sizes)
    with pytest.raises(DataError, match="partition 3 .* 3 partitions"):
        load_client_data(run, 3, 4)


def test_columns_and_splits_that_do_not_exist_are_named(parquet):
    with pytest.raises(SourceError, match=r"run config 'label-column' = 'grade' is not a column; the data has"):
        load_server_testset(cfg(parquet, **{"label-column": "grade"}))
    with pytest.raises(SourceError, match=r"run config 'test-split' = 'holdout': dataset .* has splits \['train'\]"):
        load_server_testset(cfg(parquet, **{"test-split": "holdout"}))
    with pytest.raises(SourceError, match="does not exist"):
        federated_kwargs("./no/such/dir", "train")
    with pytest.raises(SourceError, match="allowed: .parquet"):
        federated_kwargs(__file__, "train")


def test_mnist5k_through_the_generic_path_gives_the_built_in_partitions(tmp_path):
    """mnist5k written to disk as PNG images in a parquet file, read back: the same pixels, splits and partitions."""
    from common.data import _image_dataset

    x, y = _image_dataset("mnist5k")
    pixels = np.round(x.reshape(-1, 28, 28) * 255).astype(np.uint8)
    disk.image_dataset(pixels, y, column="image", classes=10).to_parquet(str(tmp_path / "mnist5k.parquet"))
    for partitioner in ("iid", "dirichlet"):
        built_in = parse_run_config({"dataset": "mnist5k", "partitioner": partitioner})
        generic = parse_run_config({"dataset": str(tmp_path / "mnist5k.parquet"), "partitioner": partitioner})
        test = load_server_testset(generic)
        assert dataset_task(generic, test) == builtin_task("mnist5k")
        assert torch.equal(test.x, load_server_testset(built_in).x)
        assert torch.equal(load_public(generic).y, load_public(built_in).y)
        for i in range(4):
            a, b = load_client_data(built_in, i, 4), load_client_data(generic, i, 4)
            assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_public_data_from_another_source(tmp_path, parquet):
    other = disk.image_parquet(tmp_path / "public.parquet", n=30, seed=5)
    run = cfg(parquet, **{"public-dataset": str(other)})
    public = load_public(run, Task((3, 12, 10), 4))
    assert len(public) == 30 and torch.equal(public.y, torch.as_tensor(disk.images(30, 5)[1]))
    # Without a public slice the clients' pool keeps those rows: 240 less the test hold-out.
    assert sum(len(load_client_data(run, i, 2).train) + len(load_client_data(run, i, 2).test) for i in range(2)) == 192
    with pytest.raises(TaskError, match=r"public-dataset .* holds examples of shape \(3, 12, 10\); the run's task has"):
        load_public(run, Task((1, 28, 28), 10))


@pytest.mark.parametrize(
    "array, shape",
    [
        (np.zeros((4, 7), np.float32), (4, 7)),
        (np.zeros((4, 6, 5), np.uint8), (4, 1, 6, 5)),
        (np.zeros((4, 6, 5, 3), np.uint8), (4, 3, 6, 5)),
        (np.zeros((4, 3, 6, 5), np.float64), (4, 3, 6, 5)),
        (np.zeros((4, 1, 6, 5), np.int16), (4, 1, 6, 5)),
    ],
)
def test_layouts_become_channels_first(array, shape):
    assert layout(array, "x").shape == shape and layout(array, "x").dtype == np.float32


def test_eight_bit_pixels_are_scaled_and_ambiguous_or_odd_arrays_refused():
    assert layout(np.full((1, 2, 2), 255, np.uint8), "x").max() == 1.0
    assert layout(np.full((1, 2), 300, np.int32), "x").max() == 300.0
    with pytest.raises(SourceError, match=r"neither axis 1 nor axis 3 has 1, 3 or 4 channels"):
        layout(np.zeros((2, 5, 5, 5)), "x")
    with pytest.raises(SourceError, match=r"allowed: \(N, F\), \(N, H, W\)"):
        layout(np.zeros((2, 1, 1, 1, 1)), "x")


@pytest.mark.parametrize("form", ["hwc-npz", "hw-npz", "csv", "parquet", "folder"])
def test_node_files_of_any_form_load_with_their_shape(tmp_path, form):
    pixels, labels = disk.images(20)
    if form == "hwc-npz":
        np.savez(tmp_path / "n.npz", x=pixels, y=labels)
        path, shape = tmp_path / "n.npz", (3, 12, 10)
    elif form == "hw-npz":
        np.savez(tmp_path / "n.npz", x=pixels[..., 0], y=labels)
        path, shape = tmp_path / "n.npz", (1, 12, 10)
    elif form == "csv":
        path, shape = disk.table_csv(tmp_path / "n.csv", n=20), (5,)
    elif form == "parquet":
        path, shape = disk.image_parquet(tmp_path / "n.parquet", n=20), (3, 12, 10)
    else:
        path, shape = disk.image_folder(tmp_path / "n", n=20), (3, 12, 10)
    data = load_node_file(str(path), cfg("digits"), stream=3)
    assert data.train.example_shape == shape and len(data.train) + len(data.test) == 20
    assert data.train.x.shape == (len(data.train), int(np.prod(shape)))


def test_a_node_file_of_another_shape_is_refused_by_the_task_naming_both(tmp_path):
    np.savez(tmp_path / "n.npz", x=disk.images(8)[0], y=np.zeros(8, np.int64))
    data = load_node_file(str(tmp_path / "n.npz"), cfg("mnist5k"), stream=0)
    with pytest.raises(TaskError, match=r"holds examples of shape \(3, 12, 10\); the run's task has \(1, 28, 28\)"):
        builtin_task("mnist5k").check(data.train.example_shape, data.train.y, "node 'clinic'")
    # Flat rows of the task's width are its pixels: the built-in export's form.
    assert builtin_task("mnist5k").accepts((784,)) and not builtin_task("mnist5k").accepts((783,))


def test_a_directory_of_node_files_is_a_federation(tmp_path):
    for i in range(3):
        disk.image_parquet(tmp_path / f"part-{i}.parquet", n=30, seed=i)
    disk.image_parquet(tmp_path / "server-test.parquet", n=16, seed=9)
    run = cfg(tmp_path)
    assert len(load_client_data(run, 1, 3).train) + len(load_client_data(run, 1, 3).test) == 30
    test = load_server_testset(run)
    assert len(test) == 16 and dataset_task(run, test) == Task((3, 12, 10), 4)
    with pytest.raises(DataError, match="has no part-3"):
        load_client_data(run, 3, 4)
    (tmp_path / "server-test.parquet").unlink()
    assert load_server_testset(run) is None and dataset_task(run, None) is None
    assert len(load_test_file(str(tmp_path / "part-0.parquet"), run)) == 30
