"""Gradient clipping (upstream ``torchopt.clip``)."""

from __future__ import annotations

from typing import Any

import torch

from torchopt import _foreach as _fe
from torchopt.transform._flat import FlatTransformation, stateless

__all__ = ['clip_grad_norm']


def clip_grad_norm(
    max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> FlatTransformation:
    r"""Clip the global norm of the updates to ``max_norm``.

    :math:`u \leftarrow u \cdot \min(1, \text{max\_norm} / (\|u\| + 10^{-6}))`, the norm taken
    over all leaves together (``norm_type`` may be ``inf``). The coefficient is a Python float,
    so the clipping is not differentiated through.
    """
    if max_norm < 0:
        raise ValueError(f'`max_norm` must be non-negative, got {max_norm!r}')
    norm_type = float(norm_type)

    def step(g: list, params: Any, inplace: bool) -> list:
        with torch.no_grad():
            norms = torch.stack(_fe.norm(g, norm_type))
            total = (
                norms.max()
                if norm_type == float('inf')
                else torch.linalg.vector_norm(norms, norm_type)
            )
            total = float(total)
        if error_if_nonfinite and not torch.isfinite(torch.tensor(total)):
            raise RuntimeError(
                f'The total norm of order {norm_type} for gradients from `parameters` is '
                'non-finite, so it cannot be clipped. To disable this error and scale the '
                'gradients by the non-finite norm anyway, set `error_if_nonfinite=False`'
            )
        coef = min(max_norm / (total + 1e-6), 1.0)
        if coef == 1.0:
            return g
        if inplace:
            _fe.mul_(g, coef)
            return g
        return _fe.mul(g, coef)

    return stateless(f'clip_grad_norm({max_norm!r})', step)
