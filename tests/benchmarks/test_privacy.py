"""The privacy benchmark: its report on hand-made rows, and local-only training under a DP budget."""

import json

import pytest

from benchmarks.baselines import local_only
from benchmarks.privacy import report
from common.config import parse_run_config


def _row(
    strategy: str, epsilon: float | None, seed: int, accuracy: float, spent: float | None, median: float | None
) -> dict:
    return {
        "dataset": "digits",
        "split": "dirichlet-0.5",
        "models": "homogeneous",
        "rounds": 2,
        "strategy": strategy,
        "epsilon": epsilon,
        "delta": 1e-5 if epsilon else None,
        "seed": seed,
        "accuracy": accuracy,
        "dp_epsilon_max": spent,
        "median_round_seconds": median,
        "wall_seconds": 10.0,
        "quiet_check": {"cpu_busy": 0.1, "load_average": 0.5, "threshold": 0.25, "waited_seconds": 0.0, "busy": False},
        "busy": False,
        "load_average": 0.5,
    }


def test_report_tables_loss_in_points_and_round_time_ratio(tmp_path):
    rows = [
        _row("fedavg", 8.0, 42, 0.80, 7.5, 0.4),
        _row("fedavg", 8.0, 43, 0.70, 7.9, 0.6),
        _row("fedavg", None, 42, 0.90, None, 0.2),
        _row("fedavg", None, 43, 0.90, None, 0.2),
        _row("local-only", 8.0, 42, 0.50, 7.95, None),
        _row("local-only", None, 42, 0.60, None, None),
    ]
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(rows))
    text = report(path)
    lines = text.splitlines()
    assert "| strategy | ε=8 | no DP |" in lines
    # Mean (std) over seeds, the seeds counted, and the highest ε spent over seeds.
    assert "| fedavg | 0.750 (0.071) (2) [7.90] | 0.900 (0.000) (2) |" in lines
    assert "| local-only | 0.500 (0.000) (1) [7.95] | 0.600 (0.000) (1) |" in lines
    assert "Most accurate: ε=8: fedavg 0.750; no DP: fedavg 0.900." in lines
    # Points lost against no DP: (0.90 - 0.75) x 100 and (0.60 - 0.50) x 100.
    assert "| fedavg | 15.0 |" in lines
    assert "| local-only | 10.0 |" in lines
    # Median round with DP (median of 0.4 and 0.6) against without: 0.5 / 0.2; local-only has no rounds.
    assert "| fedavg | 0.50 (x2.50) | 0.20 |" in lines
    assert not any(line.startswith("| local-only | -") for line in lines)
    assert (tmp_path / "privacy.png").stat().st_size > 0


def test_local_only_under_dp_spends_at_most_the_budget():
    cfg = parse_run_config(
        {"dataset": "synthetic", "samples-per-client": 64, "dp-epsilon": 2.0, "dp-delta": 1e-5, "batch-size": 16}
    )
    ledgers = {}
    scores = local_only(cfg, 2, 2, ledgers)
    assert set(ledgers) == {0, 1}
    for ledger in ledgers.values():
        assert 0 < ledger.spent() <= cfg.dp_epsilon
        # Calibrated to the budget: the whole of it is spent, within Opacus's calibration tolerance.
        assert ledger.spent() > 0.9 * cfg.dp_epsilon
        assert sum(steps for _, _, steps in ledger.history) == 2 * 4  # 2 epochs of ceil(64 / 16) steps
    assert all(0 <= a <= 1 for a in scores.values())


def test_local_only_privacy_needs_a_budget():
    with pytest.raises(ValueError, match="dp-epsilon"):
        local_only(parse_run_config({"dataset": "synthetic"}), 1, 1, {})
