"""The run directory: history.json after every round, then summary, weights and plot."""

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (write, then rename), so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class RunDirectory:
    """One run's output directory under `output-dir`."""

    @classmethod
    def reopen(cls, path: Path, history: list[dict[str, Any]]) -> "RunDirectory":
        """An existing run directory, its history set back to `history` (the checkpoint's)."""
        run = cls.__new__(cls)
        run.path = path
        run.history = history
        write_json(path / "history.json", run.history)
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
        self.history: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        """Add a round's record and persist the history."""
        self.history.append(record)
        write_json(self.path / "history.json", self.history)

    def update(self, index: int, **fields: Any) -> None:
        """Amend an earlier round's record (e.g. its federated accuracy, known one round later)."""
        self.history[index].update(fields)
        write_json(self.path / "history.json", self.history)

    def save_model(self, name: str, model: nn.Module) -> None:
        """Save a state_dict that torch.load reads."""
        torch.save(model.state_dict(), self.path / f"{name}.pt")

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json."""
        write_json(self.path / "summary.json", summary)

    def plot(self) -> None:
        """history.png: accuracy per round for each phase, and against cumulative bytes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
        sent = 0
        for phase in dict.fromkeys(r["phase"] for r in self.history):
            rows = [r for r in self.history if r["phase"] == phase]
            for key, style in (("accuracy", "-"), ("federated_accuracy", "--")):
                points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    by_round.plot(*zip(*points), style, label=f"{phase} ({key.replace('_', ' ')})")
            xs, ys = [], []
            for r in rows:
                sent += r["bytes_down"] + r["bytes_up"]
                if r.get("accuracy") is not None:
                    xs.append(sent / 1e6)
                    ys.append(r["accuracy"])
            by_bytes.plot(xs, ys, marker=".", label=phase)
        by_round.set(xlabel="round", ylabel="accuracy", title="Accuracy per round")
        by_bytes.set(xlabel="cumulative MB sent and received", ylabel="accuracy", title="Accuracy against bytes")
        for ax in (by_round, by_bytes):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path / "history.png", dpi=120)
        plt.close(fig)
