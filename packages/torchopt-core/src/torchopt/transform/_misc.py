"""Small element-wise transformations: NaN replacement, sign (Lion) and the LAMB trust ratio."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt import _checks
from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateful, stateless
from torchopt.transform.utils import write_, zeros_like

__all__ = ['nan_to_num', 'ScaleByLionState', 'scale_by_lion', 'scale_by_trust_ratio']


def nan_to_num(
    nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> FlatTransformation:
    """Replace NaN and infinities in the updates (``torch.nan_to_num``)."""

    def step(g: list, params: Any, inplace: bool) -> list:
        if inplace:
            for x in g:
                x.nan_to_num_(nan=nan, posinf=posinf, neginf=neginf)
            return g
        return [x.nan_to_num(nan=nan, posinf=posinf, neginf=neginf) for x in g]

    return stateless('nan_to_num', step)


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`: the momentum."""

    mu: list


def scale_by_lion(
    b1: float = 0.9, b2: float = 0.99, moment_requires_grad: bool = False
) -> FlatTransformation:
    r"""Lion: the sign of a momentum mix.

    :math:`u_t = \operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t)`, then
    :math:`m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t`.

    Reference: Chen et al., *Symbolic Discovery of Optimization Algorithms*, 2023.
    """
    _checks.check_beta('beta parameter at index 0', b1)
    _checks.check_beta('beta parameter at index 1', b2)

    def init_fn(params: list, treespec: Any) -> ScaleByLionState:
        return ScaleByLionState(mu=zeros_like(params, moment_requires_grad))

    def update_fn(
        g: list, state: ScaleByLionState, params: Any, inplace: bool
    ) -> tuple[list, ScaleByLionState]:
        mu = state.mu
        u = _fe.sign(_fe.lerp(mu, g, 1.0 - b1))
        if inplace:
            _fe.lerp_(mu, g, 1.0 - b2)
            new_mu = mu
            u = write_(g, u, inplace=True)
        else:
            new_mu = _fe.lerp(mu, g, 1.0 - b2)
        return u, ScaleByLionState(mu=new_mu)

    return stateful('scale_by_lion', init_fn, update_fn)


def scale_by_trust_ratio() -> FlatTransformation:
    r"""LAMB's layer-wise trust ratio: :math:`u \leftarrow u \cdot \|p\| / \|u\|` (1 if a norm is 0).

    Reference: You et al., *Large Batch Optimization for Deep Learning*, ICLR 2020.
    """

    def step(g: list, p: list | None, inplace: bool) -> list:
        assert p is not None  # (requires_params: stateless raised without them)
        p_norm = torch.stack(_fe.norm(p if not inplace else [x.detach() for x in p]))
        u_norm = torch.stack(_fe.norm(g))
        ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
        factors = list(ratio.unbind())
        if inplace:
            _fe.mul_(g, factors)
            return g
        return _fe.mul(g, factors)

    needs = 'scale_by_trust_ratio needs `params`: call update(..., params=params)'
    return stateless('scale_by_trust_ratio', step, requires_params=needs)
