"""RoundRecord and Summary: JSON round trips, files of the untyped writer, refusals by field, and the docs page."""

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from server_app.records import (
    COMMON_METRICS,
    HISTORY,
    RoundRecord,
    Summary,
    metric_fields,
    read_history,
    read_summary,
)

FIXTURES = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parents[2] / "docs" / "outputs.md"


def test_a_round_record_round_trips_through_json_unchanged():
    # The second record closes its phase, so it has the evaluation fields; the first has not.
    for record in read_history(FIXTURES / "history.json")[:2]:
        changed = record.model_copy(update={"accuracy": None, "accuracy_by_model": {"cnn": 0.25, "mlp-32": 1 / 3}})
        for r in (record, changed):
            assert RoundRecord.model_validate(json.loads(json.dumps(r.model_dump()))) == r


def test_a_summary_round_trips_through_json_unchanged():
    for name in ("summary.json", "summary-aborted.json"):
        summary = read_summary(FIXTURES / name)
        assert Summary.model_validate(json.loads(json.dumps(summary.model_dump()))) == summary


@pytest.mark.parametrize("name", ["history.json", "summary.json", "summary-aborted.json"])
def test_files_of_the_untyped_writer_read_back_as_the_same_records(name):
    """The fixtures were written from plain dicts, before the records were typed."""
    text = (FIXTURES / name).read_text()
    data = (
        HISTORY.dump_python(read_history(FIXTURES / name))
        if name == "history.json"
        else read_summary(FIXTURES / name).model_dump()
    )
    assert data == json.loads(text) and json.dumps(data, indent=2) == text


def test_fields_that_only_some_records_have_are_absent_while_none():
    first, last = read_history(FIXTURES / "history.json")[:2]
    assert "evaluation_seconds" not in first.model_dump() and last.model_dump()["evaluation_replies"] == 3
    assert "reason" not in read_summary(FIXTURES / "summary.json").model_dump()
    assert read_summary(FIXTURES / "summary-aborted.json").model_dump()["reason"] == "student round 2: too few replies"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(seconds="0.1"), "1.seconds"),
        (lambda r: r.pop("sampled"), "1.sampled"),
        (lambda r: r.update(phase=2), "1.phase"),
        (lambda r: r["failed"][0].update(node=3), "1.failed.0.node"),
        (lambda r: r.update(evaluation_replies=1.5), "1.evaluation_replies"),
        (lambda r: r.update(acuracy=0.5), "1.acuracy"),
    ],
    ids=["number-as-text", "missing", "phase-not-text", "failed-node", "fraction-of-replies", "unknown-field"],
)
def test_a_malformed_record_is_refused_naming_the_field(tmp_path, change, field):
    history = json.loads((FIXTURES / "history.json").read_text())
    change(history[1])
    (tmp_path / "history.json").write_text(json.dumps(history))
    with pytest.raises(ValidationError) as err:
        read_history(tmp_path / "history.json")
    assert err.value.error_count() == 1 and re.search(rf"^{re.escape(field)}$", str(err.value), re.M)


def test_a_method_metric_written_as_text_is_refused_naming_it(tmp_path):
    history = json.loads((FIXTURES / "history.json").read_text())
    history[2]["metrics"]["distill-steps"] = "40"
    (tmp_path / "history.json").write_text(json.dumps(history))
    with pytest.raises(ValidationError, match=r"(?m)^2\.metrics\.distill-steps\.float$"):
        read_history(tmp_path / "history.json")


def test_a_malformed_summary_is_refused_naming_the_field(tmp_path):
    summary = json.loads((FIXTURES / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "done"}))
    with pytest.raises(ValidationError, match=r"(?m)^status$"):
        read_summary(tmp_path / "summary.json")


def test_every_common_metric_fills_a_record_field():
    assert set(COMMON_METRICS.values()) <= set(RoundRecord.model_fields)
    assert "metrics" in RoundRecord.model_fields


def test_a_strategys_own_metrics_go_under_metrics_and_the_common_ones_fill_their_fields():
    fields = metric_fields(
        {"generator-loss": 1.25, "distill-kept": {"cnn": False}, "clipped-updates": 2, "train-loss": 0.5}
    )
    assert (fields["clipped"], fields["train_loss"], fields["federated_accuracy"], fields["client_seconds"]) == (
        2,
        0.5,
        None,
        None,
    )
    assert fields["metrics"] == {"generator-loss": 1.25, "distill-kept": {"cnn": False}}
    # A metric of no known name is kept under its own name, not refused.
    assert metric_fields({"generator-los": 1.25})["metrics"] == {"generator-los": 1.25}


def test_a_round_with_no_own_metrics_has_none_and_its_record_omits_them():
    fields = metric_fields({"federated-accuracy": 0.5, "distill-steps": None})
    assert fields["metrics"] is None and fields["clipped"] == 0 and fields["federated_accuracy"] == 0.5
    first = read_history(FIXTURES / "history.json")[0]
    assert first.metrics is None and "metrics" not in first.model_dump()
    record = first.model_copy(update={"metrics": {"distill-steps": 40.0, "distill-kept": {"cnn": True}}})
    assert record.model_dump()["metrics"] == {"distill-steps": 40.0, "distill-kept": {"cnn": True}}
    assert RoundRecord.model_validate(json.loads(json.dumps(record.model_dump()))) == record


def test_a_record_of_any_phase_name_reads_back():
    history = json.loads((FIXTURES / "history.json").read_text())
    history[0]["phase"] = "warm-up"
    assert HISTORY.validate_python(history)[0].phase == "warm-up"


def documented(file: str) -> set[str]:
    """The backquoted names in the first column of docs/outputs.md's table about `file`."""
    section = DOCS.read_text().split(f"### `{file}`", 1)[1]
    rows = next(block for block in section.split("\n\n") if block.startswith("|")).splitlines()[2:]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_docs_list_exactly_the_fields_of_the_records():
    assert documented("history.json") == set(RoundRecord.model_fields)
    assert documented("summary.json") == set(Summary.model_fields)
