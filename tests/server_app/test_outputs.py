import json

import torch

from server_app.outputs import RunDirectory, write_json


def record(phase, rnd, acc):
    return {"phase": phase, "round": rnd, "accuracy": acc, "federated_accuracy": acc - 0.1,
            "bytes_down": 1000, "bytes_up": 500}


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


def test_write_json_replaces_atomically(tmp_path):
    target = tmp_path / "s.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
