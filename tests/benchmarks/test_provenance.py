"""Provenance of benchmark figures: the machine and commit, and the wait for a quiet machine before a timing."""

import argparse
import os
import platform
import time
from importlib.metadata import version

import pytest

from benchmarks import provenance as prov
from benchmarks.load import growth, growth_lines, load_cell


def test_provenance_has_every_field_read_at_run_time():
    info = prov.provenance()
    assert set(info) == {"commit", "cores", "cpu", "machine", "os", "python", "torch", "flwr"}
    assert info["flwr"] == version("flwr")
    assert info["torch"] == version("torch")
    assert info["cores"] == os.cpu_count()
    assert info["python"] == platform.python_version()
    assert info["commit"] and info["cpu"]


def test_provenance_line_names_cores_and_commit():
    info = prov.provenance()
    line = prov.provenance_line(info)
    assert f"{info['cores']}-core" in line
    assert f"`{info['commit']}`" in line
    assert f"flwr {info['flwr']}" in line


def test_quiet_machine_returns_at_once():
    start = time.monotonic()
    quiet = prov.wait_until_quiet(threshold=1.0, max_wait=30, window=0.2)
    assert time.monotonic() - start < 1
    assert quiet["busy"] is False
    assert quiet["waited_seconds"] < 1
    assert quiet["load_average"] >= 0


def test_busy_machine_gives_up_at_max_wait():
    # No CPU share is below a negative threshold, so this can only end by giving up.
    start = time.monotonic()
    quiet = prov.wait_until_quiet(threshold=-1, max_wait=0.5, window=0.2)
    assert 0.5 <= time.monotonic() - start < 2
    assert quiet["busy"] is True
    assert quiet["threshold"] == -1


def test_waits_while_something_else_runs(monkeypatch):
    shares = iter([0.9, 0.6, 0.2, 0.1])
    monkeypatch.setattr(prov, "cpu_busy_share", lambda window: next(shares))
    quiet = prov.wait_until_quiet(threshold=0.25, max_wait=10)
    assert quiet["cpu_busy"] == 0.2
    assert quiet["busy"] is False


def test_default_threshold_is_a_quarter_of_the_cpu(monkeypatch):
    monkeypatch.setattr(prov, "cpu_busy_share", lambda window: 0.25)
    assert prov.wait_until_quiet(max_wait=0)["busy"] is False
    monkeypatch.setattr(prov, "cpu_busy_share", lambda window: 0.26)
    assert prov.wait_until_quiet(max_wait=0)["busy"] is True


def test_cpu_busy_share_sees_a_spinning_process():
    import multiprocessing

    spinner = multiprocessing.Process(target=_spin, args=(3.0,))
    spinner.start()
    try:
        time.sleep(0.3)
        share = prov.cpu_busy_share(1.0)
    finally:
        spinner.terminate()
    # One core of os.cpu_count() spinning.
    assert share >= 0.9 / os.cpu_count()


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_busy_machine_stops_a_timed_run_unless_allowed():
    parser = argparse.ArgumentParser()
    prov.quiet_arguments(parser)
    with pytest.raises(SystemExit, match="--allow-busy"):
        prov.before_timing(parser.parse_args(["--quiet-cpu", "-1", "--max-wait", "0"]))
    allowed = prov.before_timing(parser.parse_args(["--quiet-cpu", "-1", "--max-wait", "0", "--allow-busy"]))
    assert allowed["busy"] is True


def test_quiet_line_counts_busy_runs():
    records = [
        {"cpu_busy": 0.05, "load_average": 0.2, "threshold": 0.25, "waited_seconds": 0.0, "busy": False},
        {"cpu_busy": 0.6, "load_average": 1.5, "threshold": 0.25, "waited_seconds": 180.0, "busy": True},
    ]
    line = prov.quiet_line(records, 2)
    assert "5%-60%" in line and "0.20-1.50" in line and "2 cores" in line and "1 of 2 quiet checks" in line


def test_load_table_marks_busy_rows_and_summaries_count_them():
    before = {"load_average": 1.5, "threshold": 1.0, "waited_seconds": 180.0, "busy": True}
    rows = [{"clients": n, "median_round_s": n / 100, "busy": n == 200, "before_run": before} for n in (100, 200)]
    assert load_cell({**rows[1], "load_average_after": 2.0}) == "1.50 **busy** / 2.0"
    # A row from before the load was read before each run keeps its after-run value.
    assert load_cell({"load_average": 3.0}) == "n/a / 3.0"
    [line] = growth_lines(growth(rows, "clients", ("median_round_s",)), 100, "clients")
    assert line.endswith("2 runs, 1 busy")
