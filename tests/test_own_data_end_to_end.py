"""`flwr run` on data a federation brings: files on disk whose shape and classes no built-in dataset has, the
zoo's CIFAR ResNet beside a user's own model, a directory of node files with one node that does not fit, FedDF
distilling on public data from a source of its own."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from deploy.simulation import flwr_run, run_directory, simulation_superlink
from tests import datasets_on_disk as disk
from tests.runs import ACTORS, run_all

pytestmark = pytest.mark.e2e

NODES = 4
SMALL = {"num-student-rounds": 2, "fraction-train": 1.0, "local-epochs": 1, "batch-size": 16, "partitioner": "iid"}
CHANCE = 1 / disk.IMAGE_CLASSES


def run(flower, out, **config):
    done = flwr_run(flower, {**SMALL, **config, "output-dir": str(out)}, NODES, actors=ACTORS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = run_directory(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, json.loads((run_dir / "history.json").read_text()), done.stdout


def image_parquet_run(tmp: Path) -> dict:
    """An image parquet, with the zoo's resnet-8, a cnn and a user's model side by side."""
    data = disk.image_parquet(tmp / "images.parquet", n=240)
    return {"strategy": "fedavg", "dataset": str(data), "models": "resnet-8,cnn,tests.common.model_factories:net"}


def node_files_run(tmp: Path) -> dict:
    """A directory of node files, the last node's grey 5x5 images misfits, and FedDF's public data of its own."""
    federation = tmp / "federation"
    federation.mkdir()
    for i in range(NODES - 1):
        disk.image_parquet(federation / f"part-{i}.parquet", n=60, seed=i)
    np.savez(federation / f"part-{NODES - 1}.npz", x=np.zeros((30, 5, 5), np.uint8), y=np.arange(30) % 4)
    disk.image_parquet(federation / "server-test.parquet", n=80, seed=10)
    public = disk.image_parquet(tmp / "public.parquet", n=100, seed=20)
    return {
        "strategy": "feddf",
        "dataset": str(federation),
        "model": "cnn",
        "min-train-nodes": 2,
        "public-dataset": str(public),
        "feddf.distill-steps": 20,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both runs, at once on one SuperLink (tests/runs.py)."""
    jobs = {}
    for make in (image_parquet_run, node_files_run):
        tmp = tmp_path_factory.mktemp(make.__name__)
        jobs[make.__name__] = tmp / "out", make(tmp)
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as env:
        return run_all({name: partial(run, env, out, **config) for name, (out, config) in jobs.items()})


def test_an_image_parquet_with_resnet_8_a_cnn_and_a_users_model_side_by_side(runs):
    summary, history, _ = runs["image_parquet_run"]
    assert summary["status"] == "complete"
    assert (summary["input_shape"], summary["num_classes"]) == ([3, 12, 10], 4)
    by_model = summary["student_accuracy_by_model"]
    assert set(by_model) == {"resnet-8", "cnn", "tests.common.model_factories:net"}
    # The classes are colours: every architecture learns them well above chance in two rounds.
    assert min(by_model.values()) > 2 * CHANCE, by_model
    # Each group averages only its own architecture's replies: node 3 trains resnet-8 again (3 mod 3 = 0).
    assert history[-1]["replies"] == NODES and summary["params_by_model"]["resnet-8"] > 70_000


def test_node_files_with_a_misfit_node_and_feddf_on_public_data_of_its_own(runs):
    summary, history, stdout = runs["node_files_run"]
    refused = "its data holds examples of shape (1, 5, 5); the run's task has (3, 12, 10)"
    assert summary["refused_nodes"] == {f"partition-{NODES - 1}": refused}
    assert f"node partition-{NODES - 1} refused: {refused}" in stdout
    for r in history:
        assert f"partition-{NODES - 1}" not in r["sampled"] and r["replies"] == NODES - 1 and r["failures"] == 0
        assert r["metrics"]["distill-steps"] > 0
    assert summary["status"] == "complete" and summary["student_accuracy"] > 2 * CHANCE
