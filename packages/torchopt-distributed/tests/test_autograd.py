"""Argument checks of the distributed autograd helpers (before any RPC is needed)."""

from __future__ import annotations

import pytest
import torch

from torchopt_distributed import autograd


def test_backward_rejects_empty_inputs():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="'inputs' argument to backward\\(\\) cannot be empty"):
        autograd.backward(0, x.sum(), inputs=[])


def test_backward_rejects_outputs_without_grad():
    with pytest.raises(RuntimeError, match='does not require grad'):
        autograd.backward(0, torch.ones(()))
    with pytest.raises(RuntimeError, match='at least one tensor'):
        autograd.backward(0, [])


def test_grad_rejects_bad_arguments():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="'inputs' is empty"):
        autograd.grad(0, x.sum(), [])
    with pytest.raises(RuntimeError, match='does not require grad'):
        autograd.grad(0, torch.ones(()), [x])
    with pytest.raises(TypeError, match='inputs must be tensors'):
        autograd.grad(0, x.sum(), [x, 'y'])
