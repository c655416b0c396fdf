import pytest
import torch

from common.models import (
    build_model,
    count_params,
    initial_model,
    load_record,
    logits_from_record,
    logits_to_record,
    to_record,
)
from common.protocol import LOGITS, LOGITS_ARRAY


def test_seed_architectures_match_the_seed_scripts_parameter_counts():
    assert count_params(initial_model("mlp-128x64", "synthetic", 42)) == 13_130
    assert count_params(initial_model("mlp-32", "synthetic", 42)) == 1_386


def test_mlp_names_give_their_widths_and_depths():
    teacher, student = build_model("mlp-128x64", "digits"), build_model("mlp-32", "digits")
    assert count_params(teacher) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert count_params(student) == 64 * 32 + 32 + 32 * 10 + 10
    deep = build_model("mlp-16x16x16", "digits")
    assert [m.out_features for m in deep if isinstance(m, torch.nn.Linear)] == [16, 16, 16, 10]


@pytest.mark.parametrize("dataset, pixels", [("digits", 64), ("mnist5k", 784)])
def test_the_cnn_takes_flat_images_of_either_size(dataset, pixels):
    cnn = build_model("cnn", dataset)
    assert cnn(torch.zeros(3, pixels)).shape == (3, 10)
    assert count_params(cnn) == (9 * 16 + 16) + (16 * 9 * 32 + 32) + (128 * 10 + 10)


def test_unknown_models_and_a_cnn_on_flat_data_are_refused():
    with pytest.raises(ValueError, match=r"unknown model 'resnet'; allowed: mlp-<width>\[x<width>...\]"):
        build_model("resnet", "digits")
    with pytest.raises(ValueError) as info:
        build_model("cnn", "synthetic")
    assert str(info.value) == "model 'cnn' needs image inputs; the task has inputs of shape (32,), use an mlp-..."
    with pytest.raises(ValueError, match=r"unknown built-in dataset 'cifar10'; allowed: 'digits', 'mnist5k'"):
        build_model("mlp-32", "cifar10")


def test_initialisation_follows_seed_and_name_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = initial_model("mlp-128x64", "digits", 3)
    after = torch.rand(1)
    b = initial_model("mlp-128x64", "digits", 3)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, initial_model("mlp-128x64", "digits", 4)[0].weight)


def test_records_round_trip_and_refuse_another_architecture():
    teacher = initial_model("mlp-128x64", "digits", 1)
    copy = load_record(build_model("mlp-128x64", "digits"), to_record(teacher))
    assert torch.equal(copy[0].weight, teacher[0].weight)
    with pytest.raises(RuntimeError, match="size mismatch|Unexpected key"):
        load_record(build_model("mlp-32", "digits"), to_record(teacher))


def test_float16_logits_take_half_the_bytes_on_the_wire_and_come_back_as_float32():
    from flwr.app import RecordDict

    from server_app.transport import record_bytes

    logits = torch.tensor([[1.5, -2.25], [0.0, 3.0]]).repeat(250, 5)  # 500 x 10
    half, full = logits_to_record(logits, "float16"), logits_to_record(logits, "float32")
    assert half[LOGITS_ARRAY].dtype == "float16" and half[LOGITS_ARRAY].numpy().nbytes == 500 * 10 * 2
    sizes = [record_bytes(RecordDict({LOGITS: r})) for r in (half, full)]
    assert sizes[1] - sizes[0] == pytest.approx(500 * 10 * 2, abs=16)  # the payload, plus a few header bytes
    back = logits_from_record(half)
    assert back.dtype == torch.float32 and torch.equal(back, logits)


@pytest.mark.parametrize(
    "name, dataset, weights, outputs, entries",
    # Measured with the models of before the zoo (commit 791a617): the golden runs depend on these staying put.
    [
        ("mlp-128x64", "synthetic", 779.1289276566492, -0.00046593695878982544, 6),
        ("mlp-32", "synthetic", 121.41881305011339, 0.6083961557596922, 4),
        ("mlp-128x64", "digits", 924.287493526579, -0.8661858811974525, 6),
        ("mlp-32", "mnist5k", 476.8687373830318, -0.34710123389959335, 4),
        ("cnn", "digits", 278.06875640771705, -0.086614896543324, 6),
        ("cnn", "mnist5k", 278.06875640771705, -0.0507906936109066, 6),
    ],
)
def test_the_seed_models_keep_their_initial_weights_and_outputs(name, dataset, weights, outputs, entries):
    from common.data import builtin_task

    model = initial_model(name, dataset, 42)
    features = builtin_task(dataset).features
    with torch.no_grad():
        logits = model(torch.linspace(-1, 1, 3 * features).reshape(3, features))
    assert len(model.state_dict()) == len(to_record(model)) == entries
    assert sum(float(p.double().abs().sum()) for p in model.state_dict().values()) == pytest.approx(weights, rel=1e-9)
    assert float(logits.double().sum()) == pytest.approx(outputs, rel=1e-5, abs=1e-6)
