import json
import threading
from pathlib import Path

import pytest
import torch

from server_app.outputs import RunDirectory, write_json
from server_app.records import read_history

EXAMPLE = read_history(Path(__file__).parent / "fixtures" / "history.json")[0]


def record(phase, rnd, acc):
    return EXAMPLE.model_copy(update={"phase": phase, "round": rnd, "accuracy": acc, "federated_accuracy": acc - 0.1})


def test_history_is_on_disk_after_every_round_and_amendable(tmp_path):
    run = RunDirectory(tmp_path, "two-stage-digits")
    run.append(record("teacher", 1, 0.5))
    assert json.loads((run.path / "history.json").read_text())[0]["accuracy"] == 0.5
    run.update(0, federated_accuracy=0.42)
    run.append(record("teacher", 2, 0.6))
    saved = json.loads((run.path / "history.json").read_text())
    assert [r["round"] for r in saved] == [1, 2] and saved[0]["federated_accuracy"] == 0.42
    assert not list(run.path.glob("*.tmp"))


def test_two_runs_in_one_second_get_their_own_directories(tmp_path):
    a, b = RunDirectory(tmp_path, "x"), RunDirectory(tmp_path, "x")
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()


def test_weights_and_plot(tmp_path):
    run = RunDirectory(tmp_path / "nested" / "out", "x")
    model = torch.nn.Linear(3, 2)
    run.save_model("student", model)
    loaded = torch.load(run.path / "student.pt", weights_only=True)
    assert torch.equal(loaded["weight"], model.weight)
    for i in range(3):
        run.append(record("teacher", i + 1, 0.3 + i / 10))
        run.append(record("student", i + 1, 0.2 + i / 10))
    run.plot()
    assert (run.path / "history.png").stat().st_size > 10_000


def test_a_reader_never_sees_a_partly_written_json_file(tmp_path):
    target = tmp_path / "history.json"
    rows = [
        {"round": i, "failed": [{"node": f"partition-{j}", "reason": "no reply"} for j in range(10)]}
        for i in range(500)
    ]
    write_json(target, {"version": 0, "rows": rows})
    written = threading.Event()

    def rewrite() -> None:
        try:
            for version in range(1, 31):
                write_json(target, {"version": version, "rows": rows})
        finally:
            written.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    versions = []
    while not written.is_set():
        # A file read while being written would be cut short and fail to parse.
        versions.append(json.loads(target.read_text())["version"])
    writer.join()
    assert len(versions) > 10 and versions == sorted(versions)
    assert json.loads(target.read_text())["version"] == 30


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"status": "complete"})
    with pytest.raises(TypeError, match="not JSON serializable"):
        # Serialisation fails only after the many rows before the bad value.
        write_json(target, {"rows": list(range(100_000)), "bad": object()})
    assert json.loads(target.read_text()) == {"status": "complete"}
