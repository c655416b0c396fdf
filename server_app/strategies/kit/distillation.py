"""Server-side distillation of every group's model toward an ensemble (FedDF's step, the ensemble teacher)."""

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from common.config import Settings
from common.distill import BatchFn, ValidationFn, distill
from common.models import build_model, load_record, to_record
from common.task import Task
from server_app.round import Globals

# Share of the labelled public inputs held out for early stopping: a fifth.
VALIDATION_DIVISOR = 5


class DistillSettings(Settings):
    """The settings of server-side distillation."""

    temperature: float = Field(3.0, gt=0, description="distillation temperature T")
    # 1000 steps, stopping after 500 without improvement: at 300 and 200 a CNN group averaged from
    # one-class clients stayed at chance (mnist5k, Dirichlet 0.1); FedDF's code stops after 2000 of 10^4.
    distill_steps: int = Field(
        1000, ge=1, description="server-side distillation: at most this many Adam steps per group and round"
    )
    distill_patience: int = Field(
        50,
        ge=1,
        description="server-side distillation: stop after this many validations (every 10 steps) without improvement",
    )
    distill_learning_rate: float = Field(0.001, gt=0, description="Adam learning rate of server-side distillation")


def validation_cut(size: int) -> int:
    """How many of `size` labelled public inputs early stopping holds out: a fifth, at least one."""
    return max(1, size // VALIDATION_DIVISOR)


def distill_groups(
    globals_: Globals,
    task: Task,
    settings: DistillSettings,
    batches: Callable[[str], BatchFn],
    validation: ValidationFn,
) -> tuple[Globals, dict[str, Any]]:
    """Every group's model distilled toward the ensemble on `batches(name)`, stopping early on `validation`; the
    new models, and the metrics of the distillation (mean over groups)."""
    out, reports = {}, []
    for name, arrays in globals_.items():
        model = load_record(build_model(name, task), arrays)
        reports.append(
            distill(
                model,
                batches(name),
                validation,
                steps=settings.distill_steps,
                patience=settings.distill_patience,
                learning_rate=settings.distill_learning_rate,
                temperature=settings.temperature,
            )
        )
        out[name] = to_record(model)
    metrics = {}
    if reports:
        metrics["distill-steps"] = float(np.mean([r.steps for r in reports]))
        metrics["distill-validation-start"] = float(np.mean([r.start_validation_loss for r in reports]))
        metrics["distill-validation-best"] = float(np.mean([r.best_validation_loss for r in reports]))
    return out, metrics
