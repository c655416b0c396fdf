"""The model zoo: models from shapes, the CIFAR ResNets, ShuffleNetV2, users' factories, batch norm in records
and under FedAvg, DP compatibility, FedGen heads."""

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from common.config import MODEL_FAMILIES, check_model_name
from common.data import builtin_task
from common.feature_generator import feature_width, head
from common.models import (
    FACTORY_CONTRACT,
    IMAGE_MODELS,
    build_model,
    build_model_for,
    count_params,
    dp_compatible,
    initial_model,
    load_record,
    to_record,
)
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from common.task import Task
from server_app.screening import weights_check

F = "tests.common.model_factories"


@pytest.mark.parametrize(
    "name, shape, params",
    [
        # He et al. 2016 table 6: ResNet-20, 0.27M; FedDF's ResNet-8: 78k (1x1 conv + BN shortcuts).
        ("resnet-20", (3, 32, 32), 272_474),
        ("resnet-8", (3, 32, 32), 78_042),
        ("resnet-8", (1, 28, 28), 78_042 - 2 * 16 * 9),  # the input conv reads one channel, not three
        ("shufflenet-v2", (3, 32, 32), 352_042),
        ("cnn", (3, 32, 32), (3 * 9 * 16 + 16) + (16 * 9 * 32 + 32) + (128 * 10 + 10)),
        ("mlp-32", (3, 32, 32), 3072 * 32 + 32 + 32 * 10 + 10),
        ("mlp-32", (40,), 40 * 32 + 32 + 32 * 10 + 10),
    ],
)
def test_parameter_counts_are_the_known_ones(name, shape, params):
    assert count_params(build_model_for(name, shape, 10)) == params


def test_resnet_depths_are_the_cifar_resnets():
    convs = [m for m in build_model_for("resnet-20", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) + 1 == 20  # 19 3x3 convs and the head
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]  # the stage shortcuts
    assert len([m for m in build_model_for("resnet-8", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]) == 9


@pytest.mark.parametrize("name", ["resnet-8", "resnet-20", "shufflenet-v2", "cnn", "mlp-16"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (3, 40, 40)])
def test_image_models_take_any_image_shaped_or_flat(name, shape):
    model = build_model_for(name, shape, 7).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shaped, flat = model(x), model(x.flatten(1))
    assert shaped.shape == (2, 7) and torch.equal(shaped, flat)
    assert isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_refuse_flat_features_naming_model_and_shape(name):
    with pytest.raises(ValueError) as info:
        build_model_for(name, (40,), 10)
    assert str(info.value) == (
        f"model {name!r} needs image inputs of shape (channels, height, width); got input shape (40,), use an mlp-..."
    )
    for task in ("synthetic", Task((40,), 10)):
        with pytest.raises(ValueError) as info:
            build_model(name, task)
        shape = builtin_task(task).input_shape if isinstance(task, str) else task.input_shape
        assert str(info.value) == (
            f"model {name!r} needs image inputs; the task has inputs of shape {shape}, use an mlp-..."
        )


@pytest.mark.parametrize("name", [*IMAGE_MODELS, "mlp-16"])
def test_build_model_takes_a_task_learned_from_the_data(name):
    task = Task((3, 12, 12), 7)
    model = build_model(name, task).eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x).shape == (2, 7) and torch.equal(model(x), model(x.flatten(1)))
    # A built-in dataset's name builds what its task builds.
    by_name, by_task = initial_model(name, "digits", 3), initial_model(name, builtin_task("digits"), 3)
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_task.state_dict().values()))


def test_an_mlp_flattens_any_shape_and_a_batch_of_another_shape_is_refused():
    mlp = build_model_for("mlp-8", (2, 3, 4), 5)
    assert mlp[0].in_features == 24 and mlp(torch.ones(3, 2, 3, 4)).shape == (3, 5)
    assert build_model_for("mlp-8", (40,), 5)(torch.ones(3, 40)).shape == (3, 5)
    with pytest.raises(ValueError) as info:
        build_model_for("resnet-8", (3, 8, 8), 10)(torch.ones(2, 3, 4, 16))
    assert str(info.value) == (
        "a batch of shape (2, 3, 4, 16) does not hold examples of shape (3, 8, 8); expected (batch, 3, 8, 8) "
        "or (batch, 192)"
    )
    with pytest.raises(ValueError, match=r"^model 'cnn' needs images of 2x2 pixels or more; got input shape \(3, 1, "):
        build_model_for("cnn", (3, 1, 8), 10)
    with pytest.raises(ValueError, match=r"^model 'mlp-8': input shape \(0, 3\) is not a tuple of positive sizes"):
        build_model_for("mlp-8", (0, 3), 10)


def test_built_in_datasets_go_through_build_model_for():
    for name, dataset, shape in [("resnet-8", "digits", (1, 8, 8)), ("mlp-32", "synthetic", (32,))]:
        torch.manual_seed(0)
        a = build_model(name, dataset)
        torch.manual_seed(0)
        b = build_model_for(name, shape, 10)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # New models draw their weights from (seed, name) like the old ones.
    first, again, other = (initial_model("resnet-8", "digits", s) for s in (1, 1, 2))
    assert torch.equal(first.conv.weight, again.conv.weight) and not torch.equal(first.conv.weight, other.conv.weight)


def test_names_and_families_agree():
    for name in (*IMAGE_MODELS, "mlp-4x4", f"{F}:tiny", "mymodels:build", "a.b.c:Factory.create"):
        check_model_name(name)
    for name in IMAGE_MODELS:
        assert name in MODEL_FAMILIES
    assert "'package.module:factory'" in MODEL_FAMILIES
    for bad in ("resnet-18", "pkg.mod:", ":f", "pkg..mod:f", "pkg.mod:f:g", "1pkg:f", "pkg.mod:f()", "pkg/mod:f"):
        with pytest.raises(ValueError, match=re.escape(f"unknown model {bad!r}; allowed: {MODEL_FAMILIES}")):
            check_model_name(bad)


def test_a_users_factory_is_imported_called_with_the_shape_and_checked():
    torch.manual_seed(0)
    model = build_model_for(f"{F}:tiny", (3, 32, 32), 10)
    assert isinstance(model[1], nn.Linear) and model[1].in_features == 3072
    # Its model gets (batch, *input_shape) even from flat data, the way the built-in image datasets are stored.
    custom = build_model(f"{F}:net", "digits")
    assert custom(torch.ones(4, 64)).shape == (4, 10) and custom.training and not custom.body.training
    assert build_model_for(f"{F}:net", (40,), 3)(torch.ones(2, 40)).shape == (2, 3)
    a, b = initial_model(f"{F}:tiny", "digits", 5), initial_model(f"{F}:tiny", "digits", 5)
    assert torch.equal(a[1].weight, b[1].weight)


@pytest.mark.parametrize(
    "factory, what",
    [
        (
            "tests.common.no_such_module:tiny",
            "cannot import module 'tests.common.no_such_module' "
            "(ModuleNotFoundError: No module named 'tests.common.no_such_module')",
        ),
        (f"{F}:missing", f"module '{F}' has no attribute 'missing'"),
        (f"{F}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable but of type int"),
        (f"{F}:raises", "raises((3, 32, 32), 10) raised RuntimeError: no GPU here"),
        (
            f"{F}:not_a_module",
            "not_a_module((3, 32, 32), 10) returned an object of type OrderedDict, not a torch.nn.Module",
        ),
        (
            f"{F}:bad_forward",
            "its forward pass on a zero batch of shape (2, 3, 32, 32) raised RuntimeError: "
            "mat1 and mat2 shapes cannot be multiplied (192x32 and 5x10)",
        ),
        (f"{F}:pair", "a batch of shape (2, 3, 32, 32) gave an object of type tuple, expected a tensor of logits"),
        (
            f"{F}:wrong_classes",
            "a batch of shape (2, 3, 32, 32) gave an output of shape (2, 11) and dtype torch.float32, "
            "expected floating-point logits of shape (2, 10)",
        ),
    ],
)
def test_a_bad_factory_is_refused_naming_the_model_what_is_wrong_and_what_is_allowed(factory, what):
    with pytest.raises(ValueError) as info:
        build_model_for(factory, (3, 32, 32), 10)
    assert str(info.value) == f"model {factory!r}: {what}; allowed: {FACTORY_CONTRACT}"


def test_batch_norm_statistics_travel_in_records_and_its_counter_stays_local():
    model = initial_model("resnet-8", "digits", 1).train()
    model(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)))  # moves the running statistics
    record = to_record(model)
    assert "bn.running_mean" in record and "bn.running_var" in record and "bn.num_batches_tracked" not in record
    assert {a.dtype for a in record.values()} == {"float32"}
    assert len(record) == len(model.state_dict()) - 9  # one counter per batch norm layer
    copy = load_record(initial_model("resnet-8", "digits", 2), record)
    assert torch.equal(copy.bn.running_mean, model.bn.running_mean) and torch.any(model.bn.running_mean != 0)
    assert int(copy.bn.num_batches_tracked) == 0 and int(model.bn.num_batches_tracked) == 1
    # A record that does carry the counters (a plain state_dict) loads too.
    assert int(load_record(copy, ArrayRecord(model.state_dict())).bn.num_batches_tracked) == 1
    with pytest.raises(RuntimeError, match="Missing key"):
        load_record(copy, ArrayRecord({k: v for k, v in record.items() if k != "bn.running_var"}))


def test_fedavg_of_two_resnet_records_averages_the_batch_norm_statistics_and_passes_screening():
    models = []
    for seed, scale in ((1, 1.0), (2, 3.0)):
        model = initial_model("resnet-8", "digits", seed).train()
        model(scale * torch.randn(8, 64, generator=torch.Generator().manual_seed(seed)))
        models.append(model)
    replies = [
        RecordDict({ARRAYS: to_record(m), METRICS: MetricRecord({NUM_EXAMPLES: n})}) for m, n in zip(models, (1, 3))
    ]
    averaged = aggregate_arrayrecords(replies, NUM_EXAMPLES)
    assert list(averaged.keys()) == list(to_record(models[0]).keys())
    assert {a.dtype for a in averaged.values()} == {"float32"}
    for key in ("bn.running_var", "stage3.0.bn2.running_mean", "head.weight"):
        a, b = (r[ARRAYS][key].numpy() for r in replies)
        np.testing.assert_allclose(averaged[key].numpy(), 0.25 * a + 0.75 * b, rtol=1e-6)
    merged = load_record(build_model("resnet-8", "digits"), averaged)
    assert torch.equal(merged.bn.running_var, torch.as_tensor(averaged["bn.running_var"].numpy()))
    # The next round's replies have the average's keys, shapes and dtypes: screening accepts them.
    assert weights_check(averaged, 100)(replies[0]) is None


def test_dp_compatible_refuses_batch_norm_models():
    from opacus.validators import ModuleValidator

    assert dp_compatible(build_model("mlp-32", "digits")) is None
    assert dp_compatible(build_model("cnn", "digits")) is None
    resnet = build_model("resnet-8", "digits")
    assert dp_compatible(resnet) == (
        "it has batch norm or other trainable layers with buffers ('bn', 'stage1.0.bn1', 'stage1.0.bn2' and 6 more), "
        "which mix the examples of a batch and which DP-SGD cannot clip per example; use a model without them "
        "(an mlp-..., cnn) for dp-epsilon > 0"
    )
    assert ModuleValidator.validate(resnet.train()) and not ModuleValidator.validate(build_model("cnn", "digits"))
    assert dp_compatible(build_model("shufflenet-v2", "digits")) is not None


@pytest.mark.parametrize(
    "name, dataset, width",
    [
        ("resnet-8", "digits", 64),
        ("resnet-20", "digits", 64),
        ("shufflenet-v2", "digits", 1024),
        ("cnn", "mnist5k", 128),
    ],
)
def test_fedgen_finds_the_linear_head_of_zoo_models(name, dataset, width):
    assert feature_width(name, dataset) == width
    assert head(build_model(name, dataset)).in_features == width


def test_fedgen_takes_a_users_head_and_refuses_a_model_without_one():
    digits = builtin_task("digits")  # what the ServerApp and a node pass: the run's Task
    assert feature_width(f"{F}:tiny", digits) == 64
    assert feature_width(f"{F}:net", digits) == 8
    assert feature_width(f"{F}:tiny", "digits") == 64  # a built-in dataset's name, as build_model takes
    with pytest.raises(ValueError) as info:
        feature_width(f"{F}:no_head", digits)
    assert str(info.value) == (
        f"model '{F}:no_head': the last layer of Sequential is LogSoftmax, not a linear head; "
        "FedGen needs a model whose last layer is an nn.Linear that maps its features to the logits"
    )
    with pytest.raises(ValueError) as info:
        feature_width(f"{F}:misordered", digits)
    assert str(info.value) == (
        f"model '{F}:misordered': its last child module, Linear(10, 10), does not give the model's output; "
        "FedGen needs a model whose last layer is an nn.Linear that maps its features to the logits"
    )
