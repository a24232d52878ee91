"""Multi-tensor ops that also work under ``torch.func`` transforms and save little for backward.

``torch._foreach_*`` ops are the fast path (one call per list). The same op runs per tensor
instead in two cases:

* inside ``torch.func.vmap``/``grad`` (detected once per call from functorch's interpreter
  stack): foreach ops have no batching rules;
* when an out-of-place op is recorded for autograd (grad mode on and an input requires grad):
  foreach backward formulas save every input (``_foreach_add(a, b)`` keeps both lists,
  ``_foreach_mul(a, 0.5)`` keeps ``a``), where the per-tensor ops save nothing. Measured on a
  MAML unroll this halves the memory kept for the outer backward.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = [
    'abs', 'add', 'add_', 'addcmul', 'addcmul_', 'copy_', 'div', 'div_', 'lerp', 'lerp_',
    'maximum', 'maximum_', 'mul', 'mul_', 'neg', 'neg_', 'norm', 'sign', 'sqrt', 'sqrt_',
    'functorch_active', 'fusable',
]

_peek = torch._C._functorch.peek_interpreter_stack
_FUSED_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})


def functorch_active() -> bool:
    """Whether we run inside a ``torch.func`` transform (vmap, grad, jvp, ...)."""
    return _peek() is not None


def fusable(*lists: list) -> bool:
    """Whether torch's fused optimizer kernels may run in place on these tensor lists.

    True when not under a ``torch.func`` transform and every tensor is dense, contiguous and
    on the same CPU or CUDA device with the same floating dtype as the first one.
    """
    if _peek() is not None or not lists or not lists[0]:
        return False
    first = lists[0][0]
    device, dtype = first.device, first.dtype
    if device.type not in ('cpu', 'cuda') or dtype not in _FUSED_DTYPES:
        return False
    return all(
        t.device == device and t.dtype == dtype and t.layout == torch.strided and t.is_contiguous()
        for lst in lists
        for t in lst
    )


def _tracked(args: tuple) -> bool:
    """Whether autograd would record the op (checks the first tensor of each list argument)."""
    for a in args:
        if isinstance(a, (list, tuple)):
            if a and a[0] is not None and a[0].requires_grad:
                return True
        elif isinstance(a, torch.Tensor) and a.requires_grad:
            return True
    return False


def _make(name: str, per_tensor: Callable[..., Any], inplace: bool) -> Callable[..., Any]:
    fast = getattr(torch, f'_foreach_{name}')

    def op(*args: Any, **kwargs: Any) -> Any:
        if _peek() is None and (inplace or not (torch.is_grad_enabled() and _tracked(args))):
            return fast(*args, **kwargs)
        n = len(args[0])
        out = [
            per_tensor(*(a[i] if isinstance(a, (list, tuple)) else a for a in args), **kwargs)
            for i in range(n)
        ]
        return None if inplace else out

    op.__name__ = name
    op.__doc__ = f'``torch._foreach_{name}``, per tensor under ``torch.func`` transforms.'
    return op


def _vector_norm(x: torch.Tensor, ord: float = 2.0) -> torch.Tensor:  # noqa: A002
    return torch.linalg.vector_norm(x, ord)


abs = _make('abs', torch.abs, False)  # noqa: A001
add = _make('add', torch.add, False)
add_ = _make('add_', torch.Tensor.add_, True)
addcmul = _make('addcmul', torch.addcmul, False)
addcmul_ = _make('addcmul_', torch.Tensor.addcmul_, True)
copy_ = _make('copy_', torch.Tensor.copy_, True)
div = _make('div', torch.div, False)
div_ = _make('div_', torch.Tensor.div_, True)
lerp = _make('lerp', torch.lerp, False)
lerp_ = _make('lerp_', torch.Tensor.lerp_, True)
maximum = _make('maximum', torch.maximum, False)
maximum_ = _make('maximum_', lambda a, b: a.copy_(torch.maximum(a, b)), True)
mul = _make('mul', torch.mul, False)
mul_ = _make('mul_', torch.Tensor.mul_, True)
neg = _make('neg', torch.neg, False)
neg_ = _make('neg_', torch.Tensor.neg_, True)
norm = _make('norm', _vector_norm, False)
sign = _make('sign', torch.sign, False)
sqrt = _make('sqrt', torch.sqrt, False)
sqrt_ = _make('sqrt_', torch.Tensor.sqrt_, True)
