"""Multi-tensor ops that also work under ``torch.func`` transforms and save little for backward.

``torch._foreach_*`` ops are the fast path (one call per list). The same op runs per tensor
instead (the rule is :func:`torchopt._dispatch.per_tensor`) in two cases:

* inside ``torch.func.vmap``/``grad`` (detected once per call from functorch's interpreter
  stack): foreach ops have no batching rules. Neither have ``lerp_`` and ``addcmul_`` (vmap
  falls back to a loop over the batch and warns), so those two run as the out-of-place op
  copied into the target (same values), as ``maximum_`` does;
* when an out-of-place op is recorded for autograd (grad mode on and an input requires grad):
  foreach backward formulas save every input (``_foreach_add(a, b)`` keeps both lists,
  ``_foreach_mul(a, 0.5)`` keeps ``a``), where the per-tensor ops save nothing. Measured on a
  MAML unroll this halves the memory kept for the outer backward.

A recorded ``sqrt`` has a zero derivative where its input is exactly zero (autograd's is
infinite there). RMSprop, Adagrad and Adam with ``eps_root=0`` take ``sqrt`` of a second moment
that is exactly zero wherever a gradient entry has always been zero (a bias before BatchNorm,
an unused embedding row); with autograd's rule the chain ``inf * 0`` turns every meta-gradient
into NaN. The zero rule is the limit of the update's true derivative there: ``g / (c |g| + eps)``
has slope ``1 / eps`` at ``g = 0``, and the chain through ``sqrt`` contributes nothing. The
forward value is unchanged (``sqrt`` of a negative number is still NaN).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from torchopt import _dispatch
from torchopt._dispatch import functorch_active

__all__ = [
    'abs',
    'add',
    'add_',
    'addcmul',
    'addcmul_',
    'copy_',
    'div',
    'div_',
    'lerp',
    'lerp_',
    'maximum',
    'maximum_',
    'mul',
    'mul_',
    'neg',
    'neg_',
    'norm',
    'sign',
    'sqrt',
    'sqrt_',
    'functorch_active',
]


def _make(name: str, per_tensor: Callable[..., Any], inplace: bool) -> Callable[..., Any]:
    fast = getattr(torch, f'_foreach_{name}')

    def op(*args: Any, **kwargs: Any) -> Any:
        if not _dispatch.per_tensor(args, inplace):
            out = fast(*args, **kwargs)
            return None if inplace else list(out)
        n = len(args[0])
        out = [
            per_tensor(*(a[i] if isinstance(a, (list, tuple)) else a for a in args), **kwargs)
            for i in range(n)
        ]
        if inplace:
            return None
        # As in foreach ops, a scalar argument (a 0-dim float64 bias correction) must not
        # promote a 0-dim float32 input to float64.
        first = args[0]
        return [
            y.to(x.dtype) if y.dtype != x.dtype and x.is_floating_point() else y
            for x, y in zip(first, out)
        ]

    op.__name__ = name
    op.__doc__ = f'``torch._foreach_{name}``, per tensor under ``torch.func`` transforms.'
    return op


def _sqrt_zero_safe(x: torch.Tensor) -> torch.Tensor:
    """``torch.sqrt`` whose derivative is 0 (not inf) where ``x <= 0``, when it is recorded."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.sqrt(x)
    positive = x > 0
    root = torch.sqrt(torch.where(positive, x, torch.ones_like(x)))
    return torch.where(positive, root, torch.sqrt(x.detach()))


def _vector_norm(x: torch.Tensor, ord: float = 2.0) -> torch.Tensor:  # noqa: A002
    return torch.linalg.vector_norm(x, ord)


abs = _make('abs', torch.abs, False)  # noqa: A001
add = _make('add', torch.add, False)
add_ = _make('add_', torch.Tensor.add_, True)
addcmul = _make('addcmul', torch.addcmul, False)
addcmul_ = _make('addcmul_', lambda a, *t, **kw: a.copy_(torch.addcmul(a, *t, **kw)), True)
copy_ = _make('copy_', torch.Tensor.copy_, True)
div = _make('div', torch.div, False)
div_ = _make('div_', torch.Tensor.div_, True)
lerp = _make('lerp', torch.lerp, False)
lerp_ = _make('lerp_', lambda a, *t, **kw: a.copy_(torch.lerp(a, *t, **kw)), True)
maximum = _make('maximum', torch.maximum, False)
maximum_ = _make('maximum_', lambda a, b: a.copy_(torch.maximum(a, b)), True)
mul = _make('mul', torch.mul, False)
mul_ = _make('mul_', torch.Tensor.mul_, True)
neg = _make('neg', torch.neg, False)
neg_ = _make('neg_', torch.Tensor.neg_, True)
norm = _make('norm', _vector_norm, False)
sign = _make('sign', torch.sign, False)
sqrt = _make('sqrt', _sqrt_zero_safe, False)
sqrt_ = _make('sqrt_', torch.Tensor.sqrt_, True)
