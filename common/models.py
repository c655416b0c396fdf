"""The model registry and conversion to Flower records.

Names (checked by common.config.check_model_name, listed in its MODEL_FAMILIES):

- `mlp-<w>[x<w>...]`: a ReLU MLP with those hidden widths; it flattens any input shape.
- `cnn`: two 3x3 conv layers and a linear head, for images of any (channels, height, width).
- `resnet-8`, `resnet-20`: the CIFAR ResNets (He et al. 2016) as FedDF's code builds them (Lin et al. 2020).
- `shufflenet-v2`: ShuffleNetV2 0.5x (Ma et al. 2018) in FedDF's CIFAR form, a small mobile network.
- `package.module:factory`: a user's own model, `factory(input_shape, num_classes) -> nn.Module`.

`build_model_for(name, input_shape, num_classes)` builds any of them from one example's shape ((features,)
for tables, (C, H, W) for images); `build_model(name, task)` does it for the run's task (common/task.py). Every model
maps a batch of shape (batch, *input_shape) to (batch, num_classes) logits, and accepts the same batch flat,
(batch, prod(input_shape)), the way the built-in image datasets store their pixels. Every zoo model is an
nn.Sequential whose last layer is its linear head (what FedGen's generator feeds). See docs/models.md.
"""

import importlib
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from common.config import check_model_name, mlp_widths
from common.data import builtin_task
from common.protocol import LOGITS_ARRAY
from common.seeds import Stream, derive_seed
from common.task import Task

# Models that read (channels, height, width) images; an mlp-... reads any shape.
IMAGE_MODELS = ("cnn", "resnet-8", "resnet-20", "shufflenet-v2")

FACTORY_CONTRACT = (
    "a factory 'package.module:callable' importable in the app's environment, called as "
    "factory(input_shape, num_classes) and returning a torch.nn.Module that maps a batch of shape "
    "(batch, *input_shape) to (batch, num_classes) logits"
)


def as_batch(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`x` as a batch of examples of `shape`: given as (batch, *shape) or flat, (batch, prod(shape))."""
    if tuple(x.shape[1:]) not in (shape, (math.prod(shape),)):
        raise ValueError(
            f"a batch of shape {tuple(x.shape)} does not hold examples of shape {shape}; "
            f"expected (batch, {', '.join(map(str, shape))}) or (batch, {math.prod(shape)})"
        )
    return x.reshape(x.shape[0], *shape)


class AsShape(nn.Module):
    """The first layer of the image models: a batch, flat or not, as (batch, *shape). No parameters."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_batch(x, self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class MLP(nn.Sequential):
    """An nn.Sequential of Linear/ReLU layers that flattens inputs of more than two dimensions first (a flat
    batch passes untouched, so its parameters, their keys and its outputs are those of the plain Sequential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1) if x.dim() > 2 else x)


def build_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> MLP:
    """A ReLU MLP: num_features -> hidden... -> num_classes logits."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return MLP(*layers)


def build_cnn(image: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Two 3x3 conv layers (16, 32 channels) and a linear head; flat inputs are reshaped to `image`.

    Adaptive pooling to 2x2 makes one network fit any image of 2x2 pixels or more: the 8x8 digits, the
    28x28 MNIST images, 32x32 CIFAR.
    """
    return nn.Sequential(
        AsShape(image),
        nn.Conv2d(image[0], 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4, num_classes),
    )


# --- ResNet-8 / ResNet-20 ---------------------------------------------------------------


class BasicBlock(nn.Module):
    """He et al.'s basic block: two 3x3 conv + BN, the input added back (through a 1x1 conv + BN where the
    channels or the resolution change), ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))
            if stride != 1 or in_channels != channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def build_resnet(depth: int, image: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """The CIFAR ResNet of `depth` = 6n + 2 layers (He, Zhang, Ren and Sun, "Deep Residual Learning for Image
    Recognition", CVPR 2016, section 4.2): a 3x3 conv of 16 channels, three stages of n basic blocks of
    16, 32 and 64 channels (the last two halve the resolution), global average pooling and a linear head.

    As FedDF's code builds it (Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in
    Federated Learning", NeurIPS 2020; github.com/epfml/federated-learning-public-code, pcode/models/resnet.py,
    `ResNet_cifar`), whose ResNet-8 and ResNet-20 FedDF and the later federated distillation papers compare
    against (FedGen, Zhu, Hong and Zhou, ICML 2021, among them): batch norm after every conv, 1x1 conv + BN
    shortcuts where a stage starts (He et al.'s option B), conv weights drawn He-normal over fan-out.
    Adaptive average pooling (FedDF: an 8x8 average pool) lets one network take any image size and the input
    conv any channel count. ResNet-8 (n = 1) has 78,042 parameters for CIFAR-10 and ResNet-20 (n = 3) 272,474.
    """
    if (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n + 2 layers; got {depth}")
    n = (depth - 2) // 6
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        input=AsShape(image),
        conv=nn.Conv2d(image[0], 16, 3, padding=1, bias=False),
        bn=nn.BatchNorm2d(16),
        relu=nn.ReLU(),
    )
    width = 16
    for stage, channels in enumerate((16, 32, 64), start=1):
        blocks = []
        for i in range(n):
            blocks.append(BasicBlock(width, channels, stride=2 if stage > 1 and i == 0 else 1))
            width = channels
        layers[f"stage{stage}"] = nn.Sequential(*blocks)
    layers.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(width, num_classes))
    model = nn.Sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# --- ShuffleNetV2 0.5x -------------------------------------------------------------------


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (N, g*c, H, W) -> (N, c*g, H, W), mixing the groups' channels."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, *, depthwise: bool = False):
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=in_channels if depthwise else 1,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: half the channels pass, the other half go through 1x1 conv, 3x3 depthwise
    conv, 1x1 conv (each with BN; ReLU after the 1x1s); the halves are joined and shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *_conv_bn(half, half, 1),
            nn.ReLU(),
            *_conv_bn(half, half, 3, depthwise=True),
            *_conv_bn(half, half, 1),
            nn.ReLU(),
        )
        self.shuffle = ChannelShuffle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([kept, self.branch(changed)], dim=1))


class ShuffleDownUnit(nn.Module):
    """ShuffleNetV2's unit for spatial down sampling: two stride-2 branches of out_channels / 2 each (3x3
    depthwise conv and 1x1 conv; 1x1, 3x3 depthwise, 1x1 conv), joined and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, 2, depthwise=True), *_conv_bn(in_channels, half, 1), nn.ReLU()
        )
        self.right = nn.Sequential(
            *_conv_bn(in_channels, half, 1),
            nn.ReLU(),
            *_conv_bn(half, half, 3, 2, depthwise=True),
            *_conv_bn(half, half, 1),
            nn.ReLU(),
        )
        self.shuffle = ChannelShuffle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


# ShuffleNetV2 0.5x: the stages' channels, units after each stage's down-sampling unit, the last 1x1 conv.
SHUFFLENET_CHANNELS, SHUFFLENET_UNITS, SHUFFLENET_LAST = (48, 96, 192), (3, 7, 3), 1024


def build_shufflenet_v2(image: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """ShuffleNetV2 0.5x (Ma, Zhang, Zheng and Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
    Architecture Design", ECCV 2018) in the CIFAR form of FedDF's code (Lin et al. 2020;
    pcode/models/shufflenetv2.py, net size "0.5"), the mobile network of FedDF's heterogeneous-model runs:
    a stride-1 3x3 conv of 24 channels (no max pool: small images), three stages of 48, 96 and 192 channels
    (a down-sampling unit, then 3, 7 and 3 basic units), a 1x1 conv of 1024 channels, global average pooling
    (adaptive here, for any image size) and a linear head. 352,042 parameters for CIFAR-10.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        input=AsShape(image), conv=nn.Conv2d(image[0], 24, 3, padding=1, bias=False), bn=nn.BatchNorm2d(24)
    )
    layers["relu"] = nn.ReLU()
    width = 24
    for stage, (channels, units) in enumerate(zip(SHUFFLENET_CHANNELS, SHUFFLENET_UNITS), start=1):
        layers[f"stage{stage}"] = nn.Sequential(
            ShuffleDownUnit(width, channels), *(ShuffleUnit(channels) for _ in range(units))
        )
        width = channels
    layers.update(
        last_conv=nn.Conv2d(width, SHUFFLENET_LAST, 1, bias=False),
        last_bn=nn.BatchNorm2d(SHUFFLENET_LAST),
        last_relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(SHUFFLENET_LAST, num_classes),
    )
    return nn.Sequential(layers)


# --- a user's own model ------------------------------------------------------------------


class _InputAsShape:
    """A forward pre-hook that hands a factory's model its batch as (batch, *shape), flat or not."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (as_batch(args[0], self.shape), *args[1:])


def build_factory_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model of the factory `name` = "package.module:callable": imported, called as
    factory(input_shape, num_classes), and checked with one forward pass (in eval mode, without gradients) on
    a zero batch of 2. Raises ValueError naming the model, what is wrong and what is allowed."""
    module_name, _, attribute = name.partition(":")

    def refuse(what: str) -> ValueError:
        return ValueError(f"model {name!r}: {what}; allowed: {FACTORY_CONTRACT}")

    def first_line(exc: BaseException) -> str:
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

    try:
        factory = importlib.import_module(module_name)
    except Exception as exc:
        raise refuse(f"cannot import module {module_name!r} ({first_line(exc)})") from exc
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise refuse(f"module {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise refuse(f"{attribute!r} is not callable but of type {type(factory).__name__}")
    call = f"{attribute}({input_shape}, {num_classes})"
    try:
        model = factory(input_shape, num_classes)
    except Exception as exc:
        raise refuse(f"{call} raised {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise refuse(f"{call} returned an object of type {type(model).__name__}, not a torch.nn.Module")
    model.register_forward_pre_hook(_InputAsShape(input_shape))
    batch = (2, *input_shape)
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: a user may freeze some
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(batch, device=device))
    except Exception as exc:
        raise refuse(f"its forward pass on a zero batch of shape {batch} raised {first_line(exc)}") from exc
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(out, torch.Tensor):
        got = type(out).__name__
        raise refuse(f"a batch of shape {batch} gave an object of type {got}, expected a tensor of logits")
    if tuple(out.shape) != (2, num_classes) or not out.is_floating_point():
        raise refuse(
            f"a batch of shape {batch} gave an output of shape {tuple(out.shape)} and dtype {out.dtype}, "
            f"expected floating-point logits of shape {(2, num_classes)}"
        )
    return model


# --- the registry -------------------------------------------------------------------------

_IMAGE_BUILDERS: dict[str, Callable[[tuple[int, int, int], int], nn.Sequential]] = {
    "cnn": build_cnn,
    "resnet-8": lambda image, classes: build_resnet(8, image, classes),
    "resnet-20": lambda image, classes: build_resnet(20, image, classes),
    "shufflenet-v2": build_shufflenet_v2,
}


def build_model_for(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Model `name` for examples of `input_shape` ((features,) for tables, (channels, height, width) for
    images) and `num_classes` classes, its weights drawn from torch's global generator (see initial_model).

    Raises ValueError for an unknown name, an image model on a shape that is not (C, H, W), and a user's
    factory that cannot be imported or called or whose model does not give (batch, num_classes) logits."""
    check_model_name(name)
    input_shape = tuple(input_shape)
    if not input_shape or not all(isinstance(d, int) and d >= 1 for d in input_shape):
        raise ValueError(f"model {name!r}: input shape {input_shape} is not a tuple of positive sizes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model {name!r}: {num_classes!r} classes; allowed: 1 or more")
    if (widths := mlp_widths(name)) is not None:
        return build_mlp(math.prod(input_shape), widths, num_classes)
    if ":" in name:
        return build_factory_model(name, input_shape, num_classes)
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs image inputs of shape (channels, height, width); got input shape {input_shape}, "
            "use an mlp-..."
        )
    if name == "cnn" and min(input_shape[1:]) < 2:
        raise ValueError(f"model 'cnn' needs images of 2x2 pixels or more; got input shape {input_shape}")
    return _IMAGE_BUILDERS[name](input_shape, num_classes)


def build_model(name: str, task: Task | str) -> nn.Module:
    """build_model_for the run's task (or a built-in dataset's, by its name): its input shape and classes."""
    check_model_name(name)
    task = builtin_task(task) if isinstance(task, str) else task
    if name in IMAGE_MODELS and not task.is_image:
        raise ValueError(
            f"model {name!r} needs image inputs; the task has inputs of shape {task.input_shape}, use an mlp-..."
        )
    return build_model_for(name, task.input_shape, task.num_classes)


def initial_model(name: str, task: Task | str, seed: int) -> nn.Module:
    """build_model with weights drawn from (`seed`, `name`), leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, Stream.INITIAL_WEIGHTS, zlib.crc32(name.encode())))
        return build_model(name, task)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dp_compatible(model: nn.Module) -> str | None:
    """None if DP-SGD (Opacus' per-example gradients) can train `model`, else why not.

    Batch norm normalises each example by statistics of the whole batch, so an example's gradient depends on
    the others and clipping it bounds nothing; its running statistics are computed from the examples and
    leave the node unclipped and noiseless. Opacus refuses such layers (ModuleValidator), and so does this.
    """
    layers = [n or type(m).__name__ for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    layers += [
        n or type(m).__name__
        for n, m in model.named_modules()
        if not isinstance(m, _BatchNorm)
        and any(p.requires_grad for p in m.parameters(recurse=False))
        and any(True for _ in m.buffers(recurse=False))
    ]
    if not layers:
        return None
    shown = ", ".join(map(repr, layers[:3])) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
    return (
        f"it has batch norm or other trainable layers with buffers ({shown}), which mix the examples of a batch "
        "and which DP-SGD cannot clip per example; use a model without them (an mlp-..., cnn) for dp-epsilon > 0"
    )


def _local_keys(model: nn.Module) -> set[str]:
    """State entries that stay with each copy of a model: integer buffers such as batch norm's
    num_batches_tracked. Averaging a count means nothing (BN's momentum ignores it), and Flower's average
    would turn int64 into float64, which the replies' dtype screening then refuses."""
    return {k for k, v in model.state_dict().items() if not (v.is_floating_point() or v.is_complex())}


def to_record(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord: its parameters and floating-point buffers (batch norm's running
    mean and variance, averaged with the weights), in state_dict order; integer buffers stay local."""
    local = _local_keys(model)
    return ArrayRecord(OrderedDict((k, v) for k, v in model.state_dict().items() if k not in local))


def load_record(model: nn.Module, record: ArrayRecord) -> nn.Module:
    """Load an ArrayRecord's weights into `model` (strict: keys and shapes must match; the model's integer
    buffers keep their values unless the record carries them)."""
    state = record.to_torch_state_dict()
    own = model.state_dict()
    model.load_state_dict({**state, **{k: own[k] for k in _local_keys(model) if k not in state}}, strict=True)
    return model


def logits_to_record(logits: torch.Tensor, dtype: str) -> ArrayRecord:
    """Logits as they travel: float32, or float16 (run config `logits-dtype`) for half the bytes."""
    return ArrayRecord({LOGITS_ARRAY: Array(logits.numpy().astype(np.dtype(dtype)))})


def logits_from_record(record: ArrayRecord) -> torch.Tensor:
    """Logits received in either dtype, as float32."""
    return torch.as_tensor(record[LOGITS_ARRAY].numpy().astype(np.float32))
