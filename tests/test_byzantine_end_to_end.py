"""Byzantine nodes under `flwr run`: 1 or 2 of 10 nodes attack (tests/byzantine_app), and with the robust settings
the run completes, its models are finite and the model the attack strikes stays within its MARGIN of its accuracy in
the all-honest run measured here.

Every run is two-stage with the ensemble teacher, so that one honest run is the reference for every attack: phase
1 averages the teacher's weights (where the weight attacks strike: the teacher is judged), phase 2 distills the
student on the server from the nodes' logits (where the logit attack strikes: the student is judged, and the teacher,
which that attack leaves alone, must be the honest one). The student is not judged under weight attacks: distilled
in 300 steps on the public slice, it swings with small changes of the teacher (0.35 to 0.57 for teachers of 0.68 to
0.74 in runs of this config). Every node is sampled every round, so the attackers are k of every round's 10 replies.
benchmarks/byzantine.py measures every attack against every setting.
"""

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from deploy.processes import app_source
from deploy.simulation import flwr_run, run_directory, simulation_superlink
from tests.byzantine_app import app as byzantine_app
from tests.runs import ACTORS, run_all

pytestmark = pytest.mark.e2e

NODES = 10
CONFIG = {
    "strategy": "two-stage",
    "two-stage.num-teacher-rounds": 3,
    "num-student-rounds": 1,
    "two-stage.ensemble-teacher": True,
    # Local teachers that differ, so the ensemble is one of 10 opinions, not 10 copies of the global teacher.
    "two-stage.teacher-finetune-epochs": 1,
    "two-stage.distill-steps": 300,
    "local-epochs": 2,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
}
# The accuracy the struck model may lose against the honest run (the defaults). The teacher's holds the median's own
# cost on this short non-IID run: under the median, 2 nodes' flipped labels left it at 0.703 against the honest 0.736
# here. The student's is wider because it swings (above): one extreme node left it at 0.481 against 0.572 here.
MARGIN = {"teacher": 0.10, "student": 0.15}
# Each attack with the settings that stop it. The defaults clip one node's x100 update. Two nodes claiming
# max-num-examples each hold just under max-weight-share (0.5) of the defaults' mean, so together they decide it: the
# median ignores counts. The logit consensus is robust to one extreme node (common/distill.py); two of ten left the
# student at 0.372 against 0.572 here. Weights of 1e30 (clipped, but still pulling the defaults' mean: the teacher
# ended at 0.28 against 0.74 here) and the other attacks and settings are benchmarks/byzantine.py's, which runs the
# same ServerApp and ClientApps in one process, without a simulation's start-up for every run.
ATTACKS = {
    "scaled x100, 1 node": ("scaled", 1, {}),
    "flipped labels claiming max-num-examples, 2 nodes, median": ("label_flip", 2, {"aggregator": "median"}),
    "float32-max logits on one class, 1 node": ("extreme_logits", 1, {}),
}


def run(env: dict, app: Path, out: Path, extra: dict) -> tuple[dict, list[dict], Path]:
    """`flwr run` of `app` with CONFIG and `extra`: its summary, history and run directory."""
    done = flwr_run(env, {**CONFIG, **extra, "output-dir": str(out)}, NODES, app=app, actors=ACTORS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = run_directory(out)
    return (
        json.loads((run_dir / "summary.json").read_text()),
        json.loads((run_dir / "history.json").read_text()),
        run_dir,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The honest run and each attack's, several at once on one SuperLink (tests/runs.py)."""
    work = {name: tmp_path_factory.mktemp("run") for name in ("honest", *ATTACKS)}
    jobs = {"honest": (app_source(), {})}
    for name, (kind, attackers, settings) in ATTACKS.items():
        jobs[name] = (byzantine_app(work[name] / "app", kind, attackers), settings)
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as env:
        return run_all({name: partial(run, env, app, work[name] / "out", extra) for name, (app, extra) in jobs.items()})


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attacked_run_completes_with_finite_models_near_the_honest_accuracy(runs, attack):
    kind, attackers, _ = ATTACKS[attack]
    honest, _, _ = runs["honest"]
    assert honest["status"] == "complete"
    summary, history, run_dir = runs[attack]
    assert summary["status"] == "complete", summary["reason"]
    for saved in ("teacher.pt", "student.pt"):
        assert all(torch.isfinite(t).all() for t in torch.load(run_dir / saved, weights_only=True).values()), saved
    # Every attacker's reply passed screening: the defences, not a rejection, kept the model.
    assert all(r["replies"] == NODES and r["failures"] == 0 for r in history)
    if kind == "scaled":
        # The attacker's update was clipped to 3x the round's median norm, every teacher round.
        assert all(r["clipped"] >= attackers for r in history if r["phase"] == "teacher")
    if kind == "extreme_logits":
        # Phase 1 was honest: its teacher scores exactly as the honest run's.
        assert summary["teacher_accuracy"] == honest["teacher_accuracy"]
    struck = "student" if kind == "extreme_logits" else "teacher"
    got, want = summary[f"{struck}_accuracy"], honest[f"{struck}_accuracy"]
    assert got >= want - MARGIN[struck], f"{struck}: {got:.3f} against the honest {want:.3f}"
