import torch

from common.config import parse_run_config
from common.models import count_params, initial_model, load_record, make_model, to_record


def test_seed_config_parameter_counts_match_the_seed_script():
    cfg = parse_run_config({"dataset": "synthetic"})
    assert count_params(initial_model(cfg, "teacher")) == 13_130
    assert count_params(initial_model(cfg, "student")) == 1_386


def test_digits_shapes_and_counts():
    cfg = parse_run_config({"dataset": "digits", "teacher-hidden": "128,64", "student-hidden": "32"})
    teacher, student = initial_model(cfg, "teacher"), initial_model(cfg, "student")
    assert count_params(teacher) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert count_params(student) == 64 * 32 + 32 + 32 * 10 + 10
    assert teacher(torch.zeros(5, 64)).shape == (5, 10) and student(torch.zeros(5, 64)).shape == (5, 10)


def test_initialisation_follows_the_seed_and_leaves_the_global_generator_alone():
    cfg = parse_run_config({"seed": 3})
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = initial_model(cfg, "teacher")
    after = torch.rand(1)
    b = initial_model(cfg, "teacher")
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = initial_model(parse_run_config({"seed": 4}), "teacher")
    assert not torch.equal(a[0].weight, c[0].weight)


def test_records_round_trip_and_refuse_another_architecture():
    cfg = parse_run_config({})
    teacher = initial_model(cfg, "teacher")
    record = to_record(teacher)
    copy = load_record(make_model(cfg, "teacher"), record)
    assert torch.equal(copy[0].weight, teacher[0].weight)
    try:
        load_record(make_model(cfg, "student"), record)
    except RuntimeError as err:
        assert "size mismatch" in str(err) or "Unexpected key" in str(err)
    else:
        raise AssertionError("a teacher record loaded into a student")
