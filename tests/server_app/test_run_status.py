"""`<output-dir>/latest`, the default output-dir under ~, and `python -m server_app.outputs` exit codes."""

import os
import subprocess
import sys
import threading
from pathlib import Path

from common.config import parse_run_config
from server_app.outputs import RunDirectory, point_latest
from server_app.records import read_history, read_summary

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SUMMARY = read_summary(FIXTURES / "summary.json")


def status(*args, home: Path) -> tuple[int, str]:
    """Exit code and stdout of the status command, run with HOME=`home`."""
    done = subprocess.run(
        [sys.executable, "-m", "server_app.outputs", *map(str, args)],
        cwd=PROJECT,
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout


def test_latest_is_a_relative_link_to_the_newest_run(tmp_path):
    first = RunDirectory(tmp_path, "two-stage-digits")
    latest = tmp_path / "latest"
    assert latest.is_symlink() and os.readlink(latest) == first.path.name
    second = RunDirectory(tmp_path, "two-stage-digits")
    assert latest.is_symlink() and os.readlink(latest) == second.path.name != first.path.name
    assert latest.resolve() == second.path.resolve()
    # No temporary link is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, second.path.name, "latest"])


def test_latest_is_never_missing_while_it_is_replaced(tmp_path):
    RunDirectory(tmp_path, "x")
    missing, done = [], threading.Event()

    def watch():
        while not done.is_set():
            try:
                os.readlink(tmp_path / "latest")
            except FileNotFoundError:
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        runs = [RunDirectory(tmp_path, "x") for _ in range(300)]
    finally:
        done.set()
        watcher.join()
    assert missing == []
    assert os.readlink(tmp_path / "latest") == runs[-1].path.name


def test_a_resumed_run_elsewhere_gets_a_relative_link(tmp_path):
    resumed = RunDirectory(tmp_path / "old", "x").path
    RunDirectory(tmp_path / "new", "x")
    point_latest(tmp_path / "new", resumed)
    assert os.readlink(tmp_path / "new" / "latest") == os.path.join("..", "old", resumed.name)
    assert (tmp_path / "new" / "latest").resolve() == resumed.resolve()


def test_a_directory_named_latest_does_not_stop_the_run(tmp_path):
    (tmp_path / "latest").mkdir()
    run = RunDirectory(tmp_path, "x")
    assert run.path.is_dir() and not (tmp_path / "latest").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.path.name, "latest"])


def test_output_dir_defaults_under_home_and_relative_paths_use_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    assert parse_run_config({}).output_dir == "~/fedkd-runs"
    assert parse_run_config({}).output_path() == tmp_path.resolve() / "fedkd-runs"
    assert parse_run_config({"output-dir": "rel"}).output_path() == tmp_path.parent.resolve() / "rel"


def test_complete_run_exits_0_with_its_accuracies(tmp_path):
    run = RunDirectory(tmp_path / "fedkd-runs", "two-stage-digits")
    run.write_summary(
        SUMMARY.model_copy(
            update={
                "strategy": "two-stage",
                "teacher_accuracy": 0.91234,
                "student_accuracy": 0.8,
                "teacher_params": 17_226,
            }
        )
    )
    # No argument: ~/fedkd-runs/latest, with ~ the HOME of the command.
    assert status(home=tmp_path) == (
        0,
        f"complete: two-stage run {run.path.resolve()}; teacher accuracy 0.9123, student accuracy 0.8000\n",
    )


def test_complete_single_stage_run_has_no_teacher_accuracy(tmp_path):
    run = RunDirectory(tmp_path, "fedavg-digits")
    run.write_summary(
        SUMMARY.model_copy(
            update={"strategy": "fedavg", "teacher_accuracy": None, "student_accuracy": None, "teacher_params": None}
        )
    )
    assert status(run.path, home=tmp_path) == (0, f"complete: fedavg run {run.path.resolve()}; student accuracy n/a\n")


def test_aborted_run_exits_1_with_its_reason(tmp_path):
    run = RunDirectory(tmp_path, "feddf-digits")
    run.write_summary(
        SUMMARY.model_copy(
            update={
                "status": "aborted",
                "strategy": "feddf",
                "reason": "round 3: 1 of 4 replies, fewer than min-replies",
            }
        )
    )
    assert status(run.path, home=tmp_path) == (
        1,
        f"aborted: feddf run {run.path.resolve()}; reason: round 3: 1 of 4 replies, fewer than min-replies\n",
    )


def test_run_without_summary_exits_2(tmp_path):
    run = RunDirectory(tmp_path / "fedkd-runs", "x")
    run.append(read_history(FIXTURES / "history.json")[0])
    assert status(home=tmp_path) == (
        2,
        f"no summary.json: {run.path.resolve()} is still running, or its ServerApp died\n",
    )


def test_missing_directory_exits_2_naming_it(tmp_path):
    assert status(tmp_path / "nope", home=tmp_path) == (2, f"no such run directory: {tmp_path / 'nope'}\n")
    # No run ever started under the default output-dir.
    assert status(home=tmp_path) == (2, f"no such run directory: {tmp_path.resolve() / 'fedkd-runs' / 'latest'}\n")


def test_unreadable_summary_exits_2_naming_the_problem(tmp_path):
    run = RunDirectory(tmp_path / "fedkd-runs", "x")
    (run.path / "summary.json").write_text('{"status": "complete"')
    code, line = status(run.path, home=tmp_path)
    assert code == 2 and line.startswith(f"unreadable summary.json in {run.path.resolve()}: ")
    (run.path / "summary.json").write_text('{"status": "complete"}')
    code, line = status(run.path, home=tmp_path)
    assert code == 2 and "validation error" in line
