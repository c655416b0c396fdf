"""Server-side distillation of every group: the validation cut, the settings passed on, metrics averaged over groups."""

import pytest

from common.distill import DistillReport
from common.models import initial_model, to_record
from server_app.strategies.kit import distillation
from server_app.strategies.kit.distillation import DistillSettings, distill_groups, validation_cut


@pytest.mark.parametrize("size, cut", [(1, 1), (4, 1), (5, 1), (10, 2), (179, 35)])
def test_a_fifth_of_the_labelled_public_inputs_is_held_out_at_least_one(size, cut):
    assert validation_cut(size) == cut


def test_each_group_is_distilled_with_the_settings_and_the_metrics_are_means_over_groups(monkeypatch):
    calls = []
    reports = iter([DistillReport(10, 0.5, 0.25), DistillReport(30, 0.7, 0.35)])

    def fake_distill(model, batches, validation, **kwargs):
        calls.append((type(model).__name__, batches, validation, kwargs))
        return next(reports)

    monkeypatch.setattr(distillation, "distill", fake_distill)
    settings = DistillSettings.model_validate(
        {"temperature": 2.0, "distill-steps": 7, "distill-patience": 3, "distill-learning-rate": 0.5}
    )
    start = {name: to_record(initial_model(name, "digits", 1)) for name in ("mlp-32", "cnn")}
    validation = object()
    out, metrics = distill_groups(start, "digits", settings, lambda name: f"batches of {name}", validation)
    assert list(out) == ["mlp-32", "cnn"]
    assert [(c[1], c[2]) for c in calls] == [("batches of mlp-32", validation), ("batches of cnn", validation)]
    assert calls[0][3] == {"steps": 7, "patience": 3, "learning_rate": 0.5, "temperature": 2.0}
    assert metrics == {
        "distill-steps": 20.0,
        "distill-validation-start": pytest.approx(0.6),
        "distill-validation-best": pytest.approx(0.3),
    }


def test_no_groups_no_metrics():
    assert distill_groups({}, "digits", DistillSettings(), lambda name: None, lambda model: 0.0) == ({}, {})
