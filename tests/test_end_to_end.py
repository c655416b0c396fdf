"""`flwr run` of the app on Flower's simulation engine, asserting on the run directory."""

import json
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from common.data import builtin_task
from common.models import initial_model, to_record
from common.protocol import ARRAYS, CONFIG, EVALUATE_INCOMING, MODEL, SERVER_ROUND, TRAIN_SUPERVISED
from deploy.processes import PROJECT
from deploy.simulation import flower_pids, flwr_run, flwr_run_command, run_directory, simulation_superlink
from server_app.records import read_history
from server_app.transport import record_bytes
from tests.runs import ACTORS, run_all

pytestmark = pytest.mark.e2e

SMALL = {"two-stage.num-teacher-rounds": 3, "num-student-rounds": 3, "fraction-train": 0.6, "local-epochs": 2}
NODES = 5


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as env:
        yield env


MISBEHAVING = {
    "num-student-rounds": 1,
    "fraction-train": 1.0,
    "min-replies": 0.05,
    "local-epochs": 1,
    "fraction-evaluate": 0.0,
}


@pytest.fixture(scope="module")
def runs(flower, tmp_path_factory):
    """The small digits config run once, the misbehaving clients' run, and the small config killed in phase 2, all at
    once (tests/runs.py); the killed run on a SuperLink of its own, whose simulation alone it kills."""
    out, bad, killed = (tmp_path_factory.mktemp(name) for name in ("out", "misbehaving", "killed"))
    app = PROJECT / "tests" / "misbehaving_app"
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home-killed")) as alone:
        done = run_all(
            {
                "main": partial(flwr_run, flower, {**SMALL, "output-dir": str(out)}, NODES, actors=ACTORS),
                "misbehaving": partial(
                    flwr_run, flower, {**MISBEHAVING, "output-dir": str(bad)}, 10, app=app, actors=ACTORS
                ),
                # Killed once the first student round is recorded.
                "killed": partial(
                    kill_when_recorded,
                    alone,
                    {**SMALL, "output-dir": str(killed)},
                    SMALL["two-stage.num-teacher-rounds"] + 1,
                ),
            }
        )
    for name in ("main", "misbehaving"):
        assert done[name].returncode == 0, done[name].stdout[-3000:] + done[name].stderr[-3000:]
    return [(run_directory(out), done["main"].stdout), (run_directory(bad), done["misbehaving"].stdout), killed]


def test_every_round_is_recorded_with_accuracy_above_chance(runs):
    run_dir, _ = runs[0]
    history = json.loads((run_dir / "history.json").read_text())
    assert [(r["phase"], r["round"]) for r in history] == [("teacher", i) for i in (1, 2, 3)] + [
        ("student", i) for i in (1, 2, 3)
    ]
    for r in history:
        assert r["replies"] == 3 and r["failures"] == 0 and len(r["sampled"]) == 3
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["seconds"] > 0
        assert 0.0 <= r["federated_accuracy"] <= 1.0
    assert history[2]["accuracy"] > 0.6 and history[-1]["accuracy"] > 0.5


def test_summary_weights_and_plot_are_complete(runs):
    run_dir, stdout = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert summary["status"] == "complete"
    assert summary["teacher_accuracy"] == history[2]["accuracy"]
    assert (
        summary["student_accuracy_by_model"] == {"mlp-32": history[-1]["accuracy"]} == history[-1]["accuracy_by_model"]
    )
    assert summary["student_accuracy"] == history[-1]["accuracy"]
    assert summary["teacher_params"] == 17_226 and summary["student_params"] == 2_410
    assert summary["compression"] == pytest.approx(17_226 / 2_410)
    assert summary["bytes_total"] == sum(r["bytes_down"] + r["bytes_up"] for r in history)
    assert summary["config"]["two-stage.num-teacher-rounds"] == 3 and summary["config"]["dataset"] == "digits"
    for name, params in (("teacher", 17_226), ("student", 2_410)):
        state = torch.load(run_dir / f"{name}.pt", weights_only=True)
        assert sum(t.numel() for t in state.values()) == params
    assert (run_dir / "history.png").stat().st_size > 10_000
    assert f"fedkd: run directory: {run_dir}" in stdout


def test_bytes_are_the_records_sent_and_the_teacher_travels_once_per_node(runs):
    run_dir, _ = runs[0]
    history = json.loads((run_dir / "history.json").read_text())
    teacher_bytes, student_bytes = (
        record_bytes(RecordDict({ARRAYS: to_record(initial_model(name, "digits", 42))}))
        for name in ("mlp-128x64", "mlp-32")
    )
    assert history[1]["bytes_up"] == pytest.approx(3 * teacher_bytes, rel=0.01)
    student = [r for r in history if r["phase"] == "student"]
    reached = {name for r in student for name in r["sampled"]}
    # 3 rounds x 3 nodes get the student, the final evaluation sends it to all 5 nodes,
    # and each node reached in phase 2 gets the teacher exactly once.
    expected = (3 * 3 + NODES) * student_bytes + len(reached) * teacher_bytes
    assert sum(r["bytes_down"] for r in student) == pytest.approx(expected, rel=0.01)
    assert len(reached) > 3


def config_of(raw: dict) -> dict:
    """The run config as the ServerApp dumps it for checkpoints."""
    from server_app.settings import config_dump, parse

    return config_dump(*parse(raw))


def test_resuming_with_another_config_is_refused(runs, tmp_path):
    from common.config import ConfigError
    from server_app import checkpoint

    run_dir = runs[0][0]
    same = checkpoint.load(run_dir, config_of({**SMALL, "output-dir": "elsewhere", "round-timeout": 5}))
    assert (same.phase, same.server_round) == ("student", 3)
    # The last round's federated accuracy arrives with the final evaluation, after the last checkpoint.
    assert same.history[:5] == read_history(run_dir / "history.json")[:5] and len(same.history) == 6
    with pytest.raises(ConfigError, match=r"was made with another config: 'local-epochs' = 5 \(checkpoint: 2\)"):
        checkpoint.load(run_dir, config_of({**SMALL, "local-epochs": 5}))
    with pytest.raises(ConfigError, match="no checkpoint.pt there"):
        checkpoint.load(tmp_path, config_of(SMALL))


def kill_when_recorded(env: dict, config: dict, rounds: int) -> None:
    """Start the run and SIGKILL its simulation once `rounds` rounds are in history.json."""
    run = subprocess.Popen(
        flwr_run_command(config, NODES, actors=ACTORS),
        env=env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            history = list(Path(config["output-dir"]).glob("*/history.json"))
            if history and len(json.loads(history[0].read_text() or "[]")) >= rounds:
                break
            time.sleep(0.1)
        pids = flower_pids(env["FLWR_HOME"], "flwr-simulation")
        assert pids, f"no simulation process to kill; the run printed:\n{run.communicate()[0][-3000:]}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    finally:
        run.kill()
        run.communicate()


def test_a_run_killed_in_phase_two_resumes_to_the_uninterrupted_result(flower, runs):
    """The resumed run skips phase 1 and takes the final teacher from the checkpoint: its rounds are those of the
    uninterrupted run."""
    killed = runs[2]
    stopped = run_directory(killed)
    recorded = json.loads((stopped / "history.json").read_text())
    assert not (stopped / "summary.json").exists()
    assert recorded[-1]["phase"] == "student" and recorded[-1]["round"] < SMALL["num-student-rounds"], recorded[-1]

    resumed = flwr_run(flower, {**SMALL, "output-dir": str(killed), "resume-from": str(stopped)}, NODES, actors=ACTORS)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming after student round {recorded[-1]['round']}" in resumed.stdout + resumed.stderr
    keys = ("phase", "round", "sampled", "accuracy", "loss", "accuracy_by_model", "replies", "train_loss")
    want, got = (json.loads((d / "history.json").read_text()) for d in (runs[0][0], stopped))
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]
    assert json.loads((stopped / "summary.json").read_text())["status"] == "complete"


def test_bad_replies_are_rejected_with_their_reason_and_the_run_goes_on(runs, task_identity):
    """Nine of ten clients misbehave (tests/misbehaving_app): each is recorded with its reason, none averaged in.
    (A missed deadline is covered by the deployment test's killed SuperNode.)"""
    run_dir, _ = runs[1]
    (record,) = json.loads((run_dir / "history.json").read_text())
    reasons = {f["node"]: f["reason"] for f in record["failed"]}
    assert (
        record["replies"] == 1 and record["failures"] == 9 and set(reasons) == {f"partition-{i}" for i in range(1, 10)}
    )
    expected = {
        1: "holds NaN or Inf",
        2: "is float32[3, 3], expected float32[32, 64]",
        3: "is float64[32, 64], expected float32[32, 64]",
        4: "array keys",
        5: "num-examples",
        6: "num-examples = -5; allowed: 1 to 1000000",
        7: "num-examples = 1000000000; allowed: 1 to 1000000",
        8: "num-examples = 2.5 is not a whole number",
        9: "this client's handler failed",
    }
    for i, text in expected.items():
        assert text in reasons[f"partition-{i}"], (i, reasons[f"partition-{i}"])
    # Only the good client's model was averaged in: the global model is its reply, recomputed here.
    from flwr.app import ConfigRecord, Context, Message

    from client_app.app import app

    summary = json.loads((run_dir / "summary.json").read_text())
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 10},
        state=RecordDict(),
        run_config=summary["config"],
    )
    sent = Message(
        RecordDict(
            {
                ARRAYS: to_record(initial_model("mlp-32", "digits", 42)),
                CONFIG: ConfigRecord(
                    {SERVER_ROUND: 1, EVALUATE_INCOMING: False, MODEL: "mlp-32", **builtin_task("digits").to_config()}
                ),
            }
        ),
        dst_node_id=1,
        message_type=TRAIN_SUPERVISED,
    )
    sent.metadata.__dict__["_message_id"] = "good"
    good = app(sent, context).content[ARRAYS].to_torch_state_dict()
    saved = torch.load(run_dir / "student.pt", weights_only=True)
    assert saved.keys() == good.keys() and all(torch.allclose(saved[k], good[k], rtol=1e-5, atol=1e-7) for k in good)
