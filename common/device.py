"""Where models compute: CUDA when this process sees a GPU, else the CPU; environment variable FEDKD_DEVICE overrides.

Training, evaluation, logits and distillation (common.training, common.distill) move the model and its batches to
`compute_device()` and hand back results on the CPU, so records, logits on the wire and seeded draws (always from a
CPU torch.Generator) do not depend on the device. A simulated ClientApp sees a GPU only when the federation gives
it a share of one (`client-resources-num-gpus`; Ray hides the GPUs from the others). See docs/hardware.md.
"""

import os

import torch
from torch import nn

DEVICE_ENV = "FEDKD_DEVICE"


def compute_device() -> torch.device:
    """The device models compute on: FEDKD_DEVICE when set (`cpu`, `cuda`, `cuda:1`), else CUDA when present."""
    choice = os.environ.get(DEVICE_ENV, "").strip()
    if not choice:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(choice)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"environment variable {DEVICE_ENV} = {choice!r}; allowed: cpu, cuda, cuda:<index>")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"environment variable {DEVICE_ENV} = {choice!r}, but this process sees no CUDA device")
    return chosen


def module_device(module: nn.Module) -> torch.device:
    """The device `module`'s weights are on (the CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
