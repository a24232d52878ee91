"""Warnings name the user's line, not torchopt's internals (issue #23, item 4).

The missing-accel warning is raised deep inside the step engine, reached from several depths
(an optimizer's ``step``, a transformation's ``update``, ``AdamOp``). Each test calls torchopt
from this file and checks that the warning's file and line are that call.
"""

from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch

import torchopt
from torchopt import _kernels, accelerated_op


@pytest.fixture
def no_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as if torchopt-accel were not installed, with the one-time warning not yet given."""
    monkeypatch.setattr(accelerated_op, '_plugin', lambda: None)
    monkeypatch.setattr(accelerated_op, '_warned', set())
    # the functional in-place path asks the facade once per process (an earlier test in the same
    # worker, e.g. accel's, may have asked it already)
    monkeypatch.setattr(_kernels, '_ACCEL_CHECKED', False)


def _params() -> list[torch.Tensor]:
    return [torch.ones(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]


def _warning_at(call: Callable[[], object]) -> warnings.WarningMessage:
    """Run ``call`` and return the single missing-accel warning it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        call()
    found = [w for w in caught if 'torchopt-accel' in str(w.message)]
    assert len(found) == 1, [str(w.message) for w in caught]
    return found[0]


def _assert_points_here(record: warnings.WarningMessage, line: int) -> None:
    assert (record.filename, record.lineno) == (__file__, line), (record.filename, record.lineno)


def _line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (a comment at the end of a call)."""
    with open(__file__, encoding='utf-8') as f:
        lines = f.read().splitlines()
    hits = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(f'# {marker}')]
    assert len(hits) == 1, marker
    return hits[0]


@pytest.mark.usefixtures('no_accel')
def test_functional_update_points_at_the_caller() -> None:
    params = _params()
    grads = [torch.ones_like(p) for p in params]
    opt = torchopt.adam(1e-2, use_accelerated_op=True)
    state = opt.init(params)

    def call() -> None:
        opt.update(grads, state, params=params, inplace=True)  # functional-update

    _assert_points_here(_warning_at(call), _line_of('functional-update'))


@pytest.mark.usefixtures('no_accel')
def test_chained_update_points_at_the_caller() -> None:
    params = _params()
    grads = [torch.ones_like(p) for p in params]
    opt = torchopt.chain(torchopt.clip_grad_norm(1.0), torchopt.adam(1e-2, use_accelerated_op=True))
    state = opt.init(params)

    def call() -> None:
        opt.update(grads, state, params=params, inplace=False)  # chained-update

    _assert_points_here(_warning_at(call), _line_of('chained-update'))


@pytest.mark.usefixtures('no_accel')
def test_torch_like_step_points_at_the_caller() -> None:
    params = _params()
    opt = torchopt.Adam(params, lr=1e-2, use_accelerated_op=True)
    sum(p.sum() for p in params).backward()

    def call() -> None:
        opt.step()  # torch-like-step

    _assert_points_here(_warning_at(call), _line_of('torch-like-step'))


@pytest.mark.usefixtures('no_accel')
def test_meta_step_points_at_the_caller() -> None:
    net = torch.nn.Linear(3, 1)
    opt = torchopt.MetaAdam(net, lr=1e-2, use_accelerated_op=True)
    loss = net(torch.ones(2, 3)).sum()

    def call() -> None:
        opt.step(loss)  # meta-step

    _assert_points_here(_warning_at(call), _line_of('meta-step'))


@pytest.mark.usefixtures('no_accel')
def test_adam_op_points_at_the_caller() -> None:
    op = accelerated_op.AdamOp(inplace=False)
    mu, nu, g = torch.zeros(4), torch.zeros(4), torch.ones(4)

    def call() -> None:
        op(mu, nu, g, 1)  # adam-op

    _assert_points_here(_warning_at(call), _line_of('adam-op'))
