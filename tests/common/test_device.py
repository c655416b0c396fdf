"""common.device: CUDA when present, else the CPU; FEDKD_DEVICE overrides, and a wrong value is refused."""

import pytest
import torch
from torch import nn

from common.device import DEVICE_ENV, compute_device, module_device


def test_cuda_when_present_else_the_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert compute_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")


def test_the_environment_overrides_and_a_wrong_value_is_refused(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert compute_device() == torch.device("cpu")
    for wrong in ("tpu", "meta", "cuda:x"):
        monkeypatch.setenv(DEVICE_ENV, wrong)
        with pytest.raises(ValueError) as refused:
            compute_device()
        assert str(refused.value) == f"environment variable FEDKD_DEVICE = {wrong!r}; allowed: cpu, cuda, cuda:<index>"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ValueError, match="FEDKD_DEVICE = 'cuda', but this process sees no CUDA device"):
        compute_device()


def test_module_device_is_where_its_weights_are():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(nn.BatchNorm1d(2, affine=False)) == torch.device("cpu")  # buffers only
    assert module_device(nn.ReLU()) == torch.device("cpu")
    assert module_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
