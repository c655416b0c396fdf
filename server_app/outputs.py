"""The run directory: history.json after every round, then summary, weights and plot.

Whether a run succeeded, for scripts (`flwr run --stream` exits 0 even when the ServerApp fails):

    python -m server_app.outputs [RUN_DIR]    # default: ~/fedkd-runs/latest

prints one line and exits 0 when the run's summary.json says `complete`, 1 when it says `aborted`,
2 when there is no summary.json (the run is still going, or its ServerApp died) or no such directory.
"""

import argparse
import json
import os
import sys
from datetime import datetime
from logging import WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server_app.records import HISTORY, RoundRecord, Summary, read_summary

if TYPE_CHECKING:
    from torch import nn

    from server_app.tracking import Tracker

# `<output-dir>/latest`: a relative link to the most recently started (or resumed) run.
LATEST = "latest"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (write, then rename), so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def point_latest(root: Path, run_path: Path) -> None:
    """Make `root/latest` a relative link to `run_path`, replaced atomically so it is never missing."""
    # Relative, so the link still works where the output directory is mounted at another path.
    tmp = root / f".{LATEST}-{run_path.name}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(run_path, root), tmp)
        os.replace(tmp, root / LATEST)
    except OSError as exc:
        # A convenience link must not stop the run (e.g. a real directory named `latest` is in the way).
        from flwr.common import log

        tmp.unlink(missing_ok=True)
        log(WARNING, "fedkd: could not point %s at the run: %s", root / LATEST, exc)


class RunDirectory:
    """One run's output directory under `output-dir`."""

    @classmethod
    def reopen(cls, path: Path, history: list[RoundRecord]) -> "RunDirectory":
        """An existing run directory, its history set back to `history` (the checkpoint's)."""
        run = cls.__new__(cls)
        run.path = path
        run.history = history
        run.tracker = None
        run._write_history()
        return run

    def __init__(self, root: Path, label: str) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            path = root / (f"{stamp}-{label}" + (f"-{attempt}" if attempt else ""))
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        self.path = path
        self.history: list[RoundRecord] = []
        self.tracker: Tracker | None = None
        point_latest(root, path)

    def _write_history(self) -> None:
        write_json(self.path / "history.json", HISTORY.dump_python(self.history))

    def track(self, tracker: "Tracker") -> None:
        """Copy every round's numbers to `tracker` (run config `tracking`) from now on, and those of the history so
        far (a resumed run's) that it lacks."""
        self.tracker = tracker
        tracker.start(self.history)

    def append(self, record: RoundRecord) -> None:
        """Add a round's record and persist the history."""
        self.history.append(record)
        self._write_history()
        if self.tracker is not None:
            # The records before this one are final: the loop amends only the latest.
            self.tracker.sync(self.history[:-1])

    def update(self, index: int, **fields: Any) -> None:
        """Amend an earlier round's record (e.g. its federated accuracy, known one round later)."""
        before = self.history[index].model_copy()
        for name, value in fields.items():
            setattr(self.history[index], name, value)
        self._write_history()
        if self.tracker is not None:
            self.tracker.amend(index, before, self.history[index])

    def save_model(self, name: str, model: "nn.Module") -> None:
        """Save a state_dict that torch.load reads."""
        import torch  # here, so that the status command below does not wait seconds for torch

        torch.save(model.state_dict(), self.path / f"{name}.pt")

    def write_summary(self, summary: Summary) -> None:
        """Write summary.json."""
        write_json(self.path / "summary.json", summary.model_dump())
        if self.tracker is not None:
            self.tracker.finish(self.history, summary.status)

    def plot(self) -> None:
        """history.png: accuracy per round for each phase, and against cumulative bytes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
        sent = 0
        for phase in dict.fromkeys(r.phase for r in self.history):
            rows = [r for r in self.history if r.phase == phase]
            for key, style in (("accuracy", "-"), ("federated_accuracy", "--")):
                points = [(r.round, getattr(r, key)) for r in rows if getattr(r, key) is not None]
                if points:
                    by_round.plot(*zip(*points), style, label=f"{phase} ({key.replace('_', ' ')})")
            xs, ys = [], []
            for r in rows:
                sent += r.bytes_down + r.bytes_up
                if r.accuracy is not None:
                    xs.append(sent / 1e6)
                    ys.append(r.accuracy)
            by_bytes.plot(xs, ys, marker=".", label=phase)
        by_round.set(xlabel="round", ylabel="accuracy", title="Accuracy per round")
        by_bytes.set(xlabel="cumulative MB sent and received", ylabel="accuracy", title="Accuracy against bytes")
        for ax in (by_round, by_bytes):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path / "history.png", dpi=120)
        plt.close(fig)


def fmt_metric(value: float | None) -> str:
    """A metric for a log or report line: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def run_status(run_dir: Path) -> tuple[int, str]:
    """Exit code and one-line report of `run_dir`: 0 complete, 1 aborted, 2 no (readable) summary.json or no
    directory."""
    if not run_dir.is_dir():
        return 2, f"no such run directory: {run_dir}"
    path = run_dir.resolve()
    if not (path / "summary.json").is_file():
        return 2, f"no summary.json: {path} is still running, or its ServerApp died"
    try:
        summary = read_summary(path / "summary.json")
    except ValueError as error:  # pydantic's ValidationError and json's decode error both are
        return 2, f"unreadable summary.json in {path}: {str(error).splitlines()[0]}"
    if summary.status == "complete":
        accuracies = [
            f"{p} accuracy {fmt_metric(getattr(summary, f'{p}_accuracy'))}"
            for p in ("teacher", "student")
            if p == "student" or summary.teacher_params is not None
        ]
        return 0, f"complete: {summary.strategy} run {path}; {', '.join(accuracies)}"
    return 1, f"{summary.status}: {summary.strategy} run {path}; reason: {summary.reason}"


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m server_app.outputs`."""
    from common.config import RunConfig

    parser = argparse.ArgumentParser(
        prog="python -m server_app.outputs",
        description="Whether a fedkd run completed (exit 0), aborted (1), "
        "or has no summary.json yet or no directory (2).",
    )
    # Unexpanded, so that the help reads the same for every user; main expands it.
    default = Path(RunConfig().output_dir) / LATEST
    parser.add_argument(
        "run_dir",
        nargs="?",
        type=Path,
        default=default,
        metavar="RUN_DIR",
        help=f"a run directory (default: {default}, the most recently started run)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print a run's status line; the exit code says whether it completed."""
    code, line = run_status(parser().parse_args(argv).run_dir.expanduser())
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
