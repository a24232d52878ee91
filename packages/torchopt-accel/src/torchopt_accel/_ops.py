r"""Python side of the ``torchopt_accel`` custom ops: fake kernels, autograd and grouping.

The schemas and the CPU/CUDA kernels live in C++ (``torch.ops.torchopt_accel.*``, registered
when :mod:`torchopt_accel._C` loads). This module registers

* fake implementations, so the ops run on the ``meta`` device, under ``FakeTensorMode`` and
  under ``torch.compile(fullgraph=True)``;
* an exact autograd formula for ``adam_forward``: with :math:`s = \sqrt{v'/\hat b_2 +
  \epsilon_{root}}`, :math:`d = s + \epsilon` and cotangents :math:`\bar u, \bar m', \bar v'`,

  .. math::

      G_m = \bar m' + \frac{\bar u}{\hat b_1 d}, \quad
      G_v = \bar v' - \frac{\bar u\, m'}{2 \hat b_1 \hat b_2\, s\, d^2}, \quad
      \bar g = (1-\beta_1) G_m + 2 (1-\beta_2)\, g\, G_v, \quad
      \bar m = \beta_1 G_m, \quad \bar v = \beta_2 G_v

  (:math:`\hat b_i = 1 - \beta_i^t`; the :math:`1/s` term is 0 where :math:`s = 0`, an entry
  whose gradient was always 0 with :math:`\epsilon_{root} = 0`, where autograd would give 0/0).
  The fused ``adam_backward`` kernel computes it when no graph of the backward is needed;
  otherwise (``create_graph=True``, ``torch.func``) the same formula runs as differentiable
  ``torch`` ops, so higher-order derivatives are exact too.

and the Python entry points that split leaves into (device, dtype) groups and make one op call
per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    'adam_step_',
    'adam_forward',
    'adam_apply_',
    'adam_backward_reference',
    'group_by_device_dtype',
    'sgd_update_',
    'sgd_update_reference',
]

_ops = torch.ops.torchopt_accel
_LIB = 'torchopt_accel'


# --------------------------------------------------------------------------------------------
# Fake (meta) implementations: outputs are laid out like the C++ kernels' (``empty_like``).


@torch.library.register_fake(f'{_LIB}::adam_step_')
def _adam_step_fake(updates, mu, nu, b1, b2, eps, eps_root, count) -> None:  # noqa: ANN001
    return None


@torch.library.register_fake(f'{_LIB}::adam_apply_')
def _adam_apply_fake(*args) -> None:  # noqa: ANN002
    # (params, grads, mu, nu, lr, b1, b2, eps, eps_root, count, weight_decay, decoupled,
    # maximize): mutates its list arguments in place and returns nothing.
    return None


@torch.library.register_fake(f'{_LIB}::sgd_update_')
def _sgd_update_fake(
    grads,
    bufs,
    params,
    lr,
    momentum,
    dampening,
    weight_decay,  # noqa: ANN001
    nesterov,
    maximize,
    first_step,
) -> None:  # noqa: ANN001
    # Mutates grads and bufs in place and returns nothing; the leaf alignment is checked here
    # too, so a traced (meta / fake / compiled) call fails like the eager kernel does.
    name = 'torchopt_accel.sgd_update_'
    if len(bufs) != len(grads) or (params and len(params) != len(grads)):
        raise RuntimeError(
            f'{name}: `grads`, `bufs` and `params` must be leaf-aligned, got {len(grads)}, '
            f'{len(bufs)} and {len(params)} tensors'
        )
    if weight_decay != 0.0 and len(params) != len(grads):
        raise RuntimeError(
            f'{name}: `params` has {len(params)} tensors but `grads` has '
            f'{len(grads)}; with weight_decay != 0 the parameters are read'
        )
    for lst, arg in ((bufs, 'bufs'), (params, 'params')):
        for i, (t, g) in enumerate(zip(lst, grads)):
            if t.shape != g.shape or t.dtype != g.dtype or t.device != g.device:
                raise RuntimeError(
                    f'{name}: `{arg}[{i}]` is {tuple(t.shape)} {t.dtype} on {t.device} but '
                    f'`grads[{i}]` is {tuple(g.shape)} {g.dtype} on {g.device}'
                )
    return None


@torch.library.register_fake(f'{_LIB}::adam_forward')
def _adam_forward_fake(updates, mu, nu, b1, b2, eps, eps_root, count):  # noqa: ANN001, ANN202
    return (
        [torch.empty_like(t) for t in updates],
        [torch.empty_like(t) for t in mu],
        [torch.empty_like(t) for t in nu],
    )


@torch.library.register_fake(f'{_LIB}::adam_backward')
def _adam_backward_fake(  # noqa: ANN202
    grad_updates,
    grad_mu,
    grad_nu,
    updates,
    mu,
    nu,
    b1,
    b2,
    eps,
    eps_root,
    count,  # noqa: ANN001
):
    return (
        [torch.empty_like(t) for t in updates],
        [torch.empty_like(t) for t in mu],
        [torch.empty_like(t) for t in nu],
    )


# --------------------------------------------------------------------------------------------
# Autograd of adam_forward.


def _sqrt_zero_safe(x: torch.Tensor) -> torch.Tensor:
    """``torch.sqrt`` whose derivative is 0 (not inf) at 0, so a graph of the backward stays finite."""
    positive = x > 0
    return torch.where(
        positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.sqrt(x.detach())
    )


def adam_backward_reference(
    grad_updates: Sequence[torch.Tensor | None],
    grad_mu: Sequence[torch.Tensor | None],
    grad_nu: Sequence[torch.Tensor | None],
    updates: Sequence[torch.Tensor],
    mu: Sequence[torch.Tensor],
    nu: Sequence[torch.Tensor],
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    count: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The exact backward of ``adam_forward`` written with differentiable ``torch`` ops.

    Used when the backward itself is differentiated (``create_graph=True``, nested
    ``torch.func`` transforms). ``None`` cotangents count as zero.
    """
    inv_bc1 = 1.0 / (1.0 - b1**count)
    inv_bc2 = 1.0 / (1.0 - b2**count)
    dg, dm, dv = [], [], []
    for i, (g, m0, v0) in enumerate(zip(updates, mu, nu)):
        m = b1 * m0 + (1.0 - b1) * g
        v = b2 * v0 + (1.0 - b2) * g * g
        root = _sqrt_zero_safe(v * inv_bc2 + eps_root)
        denom = root + eps
        gu = grad_updates[i]
        gm = grad_mu[i] if grad_mu else None
        gv = grad_nu[i] if grad_nu else None
        total_m = torch.zeros_like(m) if gm is None else gm
        total_v = torch.zeros_like(v) if gv is None else gv
        if gu is not None:
            total_m = total_m + gu * inv_bc1 / denom
            # 0 (not 0/0) where root = 0; the inner where keeps its own derivative finite.
            positive = root > 0
            safe = torch.where(positive, root, torch.ones_like(root))
            chain = gu * m * (0.5 * inv_bc1 * inv_bc2) / (safe * denom * denom)
            total_v = total_v - torch.where(positive, chain, torch.zeros_like(chain))
        dg.append((1.0 - b1) * total_m + (2.0 * (1.0 - b2)) * g * total_v)
        dm.append(b1 * total_m)
        dv.append(b2 * total_v)
    return dg, dm, dv


def _setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
    updates, mu, nu, b1, b2, eps, eps_root, count = inputs
    ctx.n = len(updates)
    ctx.hyper = (b1, b2, eps, eps_root, count)
    ctx.save_for_backward(*updates, *mu, *nu)


def _zeros_for_missing(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list:
    """``[]`` when every cotangent is missing (the kernel reads zeros), else fill the gaps."""
    if all(g is None for g in grads):
        return []
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _backward_lists(
    saved: Sequence[torch.Tensor],
    n: int,
    hyper: tuple,
    grad_updates: Any,
    grad_mu: Any,
    grad_nu: Any,
    *,
    force_reference: bool = False,
) -> tuple[list, list, list]:
    updates, mu, nu = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n :])
    grad_updates = list(grad_updates) if grad_updates is not None else [None] * n
    grad_mu = list(grad_mu) if grad_mu is not None else [None] * n
    grad_nu = list(grad_nu) if grad_nu is not None else [None] * n
    b1, b2, eps, eps_root, count = hyper
    needs_graph = force_reference or (
        torch.is_grad_enabled()
        and any(
            t is not None and t.requires_grad for t in (*saved, *grad_updates, *grad_mu, *grad_nu)
        )
    )
    if needs_graph:
        return adam_backward_reference(
            grad_updates, grad_mu, grad_nu, updates, mu, nu, b1, b2, eps, eps_root, count
        )
    dg, dm, dv = _ops.adam_backward(
        [torch.zeros_like(t) if g is None else g for g, t in zip(grad_updates, updates)],
        _zeros_for_missing(grad_mu, mu),
        _zeros_for_missing(grad_nu, nu),
        updates, mu, nu, b1, b2, eps, eps_root, count,
    )  # fmt: skip
    return list(dg), list(dm), list(dv)


def _backward(ctx: Any, grad_updates: list, grad_mu: list, grad_nu: list) -> tuple:
    dg, dm, dv = _backward_lists(
        ctx.saved_tensors, ctx.n, ctx.hyper, grad_updates, grad_mu, grad_nu
    )
    return dg, dm, dv, None, None, None, None, None


class _AdamForwardFunction(torch.autograd.Function):
    """``adam_forward`` for ``torch.func`` transforms (grad, vjp, jacrev, vmap).

    PyTorch's ``register_autograd`` does not support functorch transforms, so under them the op
    runs inside this Function: leaves are passed flat (``n`` per list), the backward is the
    differentiable reference formula, and the vmap rule batches the element-wise kernel by
    moving every batch dimension to the front.
    """

    @staticmethod
    def forward(n: int, hyper: tuple, *flat: torch.Tensor) -> tuple:
        with torch.no_grad():
            u, m, v = _ops.adam_forward(
                list(flat[:n]), list(flat[n : 2 * n]), list(flat[2 * n :]), *hyper
            )
        return (*u, *m, *v)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        n, hyper, *flat = inputs
        ctx.n, ctx.hyper = n, hyper
        ctx.save_for_backward(*flat)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        n = ctx.n
        dg, dm, dv = _backward_lists(
            ctx.saved_tensors, n, ctx.hyper, grads[:n], grads[n : 2 * n], grads[2 * n :],
            force_reference=True,
        )  # fmt: skip
        return (None, None, *dg, *dm, *dv)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, n: int, hyper: tuple, *flat: torch.Tensor) -> tuple:
        size = info.batch_size
        batched = [
            t.unsqueeze(0).expand(size, *t.shape) if d is None else t.movedim(d, 0)
            for t, d in zip(flat, in_dims[2:])
        ]
        out = _AdamForwardFunction.apply(n, hyper, *batched)
        return out, (0,) * len(out)


torch.library.register_autograd(f'{_LIB}::adam_forward', _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Grouping and the public entry points.


def group_by_device_dtype(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by ``(device, dtype)``, in first-seen order."""
    if not tensors:
        return []
    first = tensors[0]
    device, dtype = first.device, first.dtype
    if all(t.device == device and t.dtype == dtype for t in tensors):
        return [list(range(len(tensors)))]
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def _per_group(*lists: Sequence[torch.Tensor]) -> list[tuple[list[int], list[list]]]:
    """``lists`` split by the ``(device, dtype)`` groups of ``lists[0]``: ``(indices, sublists)``."""
    groups = group_by_device_dtype(lists[0])
    if len(groups) == 1:
        return [(groups[0], [list(lst) for lst in lists])]
    return [(idx, [[lst[i] for i in idx] for lst in lists]) for idx in groups]


def _check_args(
    name: str,
    updates: Sequence,
    mu: Sequence,
    nu: Sequence,
    count: Any,
    names: tuple[str, str, str] = ('updates', 'mu', 'nu'),
) -> None:
    for arg, value in zip(names, (updates, mu, nu)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f'{name}: `{arg}` must be a list of tensors, got {type(value).__name__}'
            )
    if not len(updates) == len(mu) == len(nu):
        a, b, c = names
        raise ValueError(
            f'{name}: `{a}`, `{b}` and `{c}` must have one tensor per leaf, got '
            f'{len(updates)}, {len(mu)} and {len(nu)}'
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        if not isinstance(count, torch.SymInt):
            raise ValueError(f'{name}: `count` must be a Python int >= 1 (the step), got {count!r}')


def adam_step_(
    updates: Sequence[torch.Tensor],
    mu: Sequence[torch.Tensor],
    nu: Sequence[torch.Tensor],
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    count: int,
) -> None:
    r"""One in-place Adam step over lists of leaves, one fused kernel call per (device, dtype).

    .. math::

        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        g \leftarrow \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        updates: the gradients :math:`g`; overwritten with the update direction.
        mu: first moments, updated in place.
        nu: second moments, updated in place.
        b1: :math:`\beta_1`, in ``[0, 1)``.
        b2: :math:`\beta_2`, in ``[0, 1)``.
        eps: :math:`\epsilon`, added outside the square root.
        eps_root: :math:`\epsilon_{root}`, added inside the square root.
        count: the step number :math:`t \ge 1` (bias corrections are computed in double).

    When autograd records (grad mode on and a tensor requires grad), the step is computed by the
    differentiable ``adam_forward`` and written back with ``copy_``, exactly like an in-place
    ``torch`` op on those tensors would be recorded.
    """
    _check_args('torchopt_accel.adam_step_', updates, mu, nu, count)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*updates, *mu, *nu)):
        # The backward needs the pre-step values, which the copies below overwrite: save clones.
        new_u, new_m, new_v = adam_forward(
            [t.clone() for t in updates], [t.clone() for t in mu], [t.clone() for t in nu],
            b1, b2, eps, eps_root, count,
        )  # fmt: skip
        for dst, src in zip((*updates, *mu, *nu), (*new_u, *new_m, *new_v)):
            dst.copy_(src)
        return
    for _, lists in _per_group(updates, mu, nu):
        _ops.adam_step_(*lists, b1, b2, eps, eps_root, count)


def adam_forward(
    updates: Sequence[torch.Tensor],
    mu: Sequence[torch.Tensor],
    nu: Sequence[torch.Tensor],
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    count: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Out-of-place, differentiable Adam step: returns ``(new_updates, new_mu, new_nu)``.

    The same math as :func:`adam_step_`; gradients flow to ``updates``, ``mu`` and ``nu``
    through the exact backward described in this module's docstring (second order included).
    """
    _check_args('torchopt_accel.adam_forward', updates, mu, nu, count)
    if torch._C._are_functorch_transforms_active():
        n = len(updates)
        flat = _AdamForwardFunction.apply(n, (b1, b2, eps, eps_root, count), *updates, *mu, *nu)
        return list(flat[:n]), list(flat[n : 2 * n]), list(flat[2 * n :])
    groups = _per_group(updates, mu, nu)
    if len(groups) == 1:
        u, m, v = _ops.adam_forward(*groups[0][1], b1, b2, eps, eps_root, count)
        return list(u), list(m), list(v)
    n = len(updates)
    out_u: list = [None] * n
    out_m: list = [None] * n
    out_v: list = [None] * n
    for idx, lists in groups:
        u, m, v = _ops.adam_forward(*lists, b1, b2, eps, eps_root, count)
        for j, i in enumerate(idx):
            out_u[i], out_m[i], out_v[i] = u[j], m[j], v[j]
    return out_u, out_m, out_v


def adam_apply_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    mu: Sequence[torch.Tensor],
    nu: Sequence[torch.Tensor],
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    count: int,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    maximize: bool = False,
) -> None:
    r"""One full ``torch.optim.Adam`` / ``AdamW`` step written to the parameters, in one pass.

    Per element (one fused kernel call per (device, dtype) group; ``grads`` are only read):

    .. math::

        g' = \pm g \;(+\,\lambda \theta \text{ if not decoupled}), \quad
        \theta \leftarrow (1 - \eta\lambda)\,\theta \text{ if decoupled}, \\
        m \leftarrow \beta_1 m + (1-\beta_1) g', \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g'^2, \quad
        \theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}
        \frac{m}{\sqrt{v / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    (:math:`-g` when ``maximize``). With ``eps_root = 0`` this is exactly ``torch.optim.Adam``
    (``decoupled=False``) and ``torch.optim.AdamW`` (``decoupled=True``) without amsgrad.

    Args:
        params: the parameters :math:`\theta`, updated in place.
        grads: their gradients :math:`g` (not modified).
        mu: first moments, updated in place.
        nu: second moments, updated in place.
        lr: learning rate :math:`\eta \ge 0`.
        b1: :math:`\beta_1`, in ``[0, 1)``.
        b2: :math:`\beta_2`, in ``[0, 1)``.
        eps: :math:`\epsilon`, added outside the square root.
        eps_root: :math:`\epsilon_{root}`, added inside the square root.
        count: the step number :math:`t \ge 1` (bias corrections are computed in double).
        weight_decay: :math:`\lambda \ge 0`.
        decoupled: AdamW's decoupled decay instead of Adam's L2 term in the gradient.
        maximize: ascend instead of descend.

    Raises:
        TypeError: a list argument is not a list or tuple.
        ValueError: the lists are not leaf-aligned, or ``count`` is not an int ``>= 1``.
        RuntimeError: autograd would have to record the in-place step (run it under
            ``torch.no_grad()``, as ``torch.optim`` does), or the kernel's own checks fail
            (shapes, dtypes, devices, hyper-parameter ranges, aliasing), naming the argument.
    """
    name = 'torchopt_accel.adam_apply_'
    if not isinstance(params, (list, tuple)):
        raise TypeError(f'{name}: `params` must be a list of tensors, got {type(params).__name__}')
    _check_args(name, grads, mu, nu, count, names=('grads', 'mu', 'nu'))
    if len(params) != len(grads):
        raise ValueError(
            f'{name}: `params`, `grads`, `mu` and `nu` must have one tensor per leaf, got '
            f'{len(params)}, {len(grads)}, {len(mu)} and {len(nu)}'
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *grads, *mu, *nu)):
        raise RuntimeError(
            f'{name}: an input requires grad and grad mode is on; this in-place optimizer step '
            'is not differentiable: call it under torch.no_grad() (as torch.optim does) or use '
            'adam_forward for a differentiable step'
        )
    hyper = (lr, b1, b2, eps, eps_root, count, weight_decay, decoupled, maximize)
    for _, lists in _per_group(params, grads, mu, nu):
        _ops.adam_apply_(*lists, *hyper)


# --------------------------------------------------------------------------------------------
# Momentum SGD: the in-place update of torchopt.sgd(lr, momentum, ...).update(..., inplace=True).


def sgd_update_reference(
    grads: Sequence[torch.Tensor],
    bufs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor] = (),
    *,
    lr: float,
    momentum: float,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first_step: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The math of :func:`sgd_update_` in plain ``torch`` ops, out of place.

    Returns ``(updates, new_bufs)`` and modifies nothing; the tests compare the kernels with it.
    """
    updates, new_bufs = [], []
    for i, (g, b) in enumerate(zip(grads, bufs)):
        g = -g if maximize else g
        if weight_decay != 0.0:
            g = g + weight_decay * params[i]
        b = g.clone() if first_step else momentum * b + (1.0 - dampening) * g
        d = g + momentum * b if nesterov else b
        updates.append(-lr * d)
        new_bufs.append(b)
    return updates, new_bufs


def sgd_update_(
    grads: Sequence[torch.Tensor],
    bufs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor] = (),
    *,
    lr: float,
    momentum: float,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first_step: bool = False,
) -> None:
    r"""The in-place momentum-SGD update, one fused kernel call per (device, dtype) group.

    Per element, as ``torch.optim.SGD`` and ``torchopt.sgd``'s chain (weight decay, trace,
    scale by :math:`-\eta`):

    .. math::

        g' = \pm g + \lambda \theta, \quad
        b \leftarrow g' \text{ (first step) or } \mu b + (1 - d)\, g', \quad
        g \leftarrow -\eta\,(g' + \mu b \text{ if Nesterov else } b)

    (:math:`-g` when ``maximize``). ``grads`` is overwritten with the update, so
    ``torch._foreach_add_(params, grads)`` (or ``torchopt.apply_updates``) finishes the step. One
    pass: ``g`` and ``b`` are read once (``b`` not on the first step), ``params`` only when
    ``weight_decay != 0``, and ``b`` and ``g`` written once.

    Args:
        grads: the gradients :math:`g`; overwritten with the update :math:`-\eta d`.
        bufs: the momentum buffers :math:`b`, updated in place.
        params: the parameters :math:`\theta`, read for the weight decay only (may be empty
            when ``weight_decay == 0``).
        lr: learning rate :math:`\eta \ge 0`.
        momentum: :math:`\mu \ge 0`.
        dampening: :math:`d`.
        weight_decay: :math:`\lambda \ge 0` (L2 term added to the gradient).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: ascend instead of descend.
        first_step: the buffers are set to :math:`g'` (not read), as ``torch.optim.SGD``'s
            first step.

    Raises:
        TypeError: a list argument is not a list or tuple.
        ValueError: the lists are not leaf-aligned.
        RuntimeError: autograd would have to record the in-place update (run it under
            ``torch.no_grad()``), or the kernel's own checks fail (shapes, dtypes, devices,
            hyper-parameter ranges, aliasing), naming the argument.
    """
    name = 'torchopt_accel.sgd_update_'
    for arg, value in (('grads', grads), ('bufs', bufs), ('params', params)):
        if not isinstance(value, (list, tuple)):
            kind = type(value).__name__
            raise TypeError(f'{name}: `{arg}` must be a list of tensors, got {kind}')
    if len(bufs) != len(grads) or (len(params) not in (0, len(grads))):
        raise ValueError(
            f'{name}: `grads` and `bufs` (and `params` unless empty) must have one tensor per '
            f'leaf, got {len(grads)}, {len(bufs)} and {len(params)}'
        )
    if weight_decay != 0.0 and len(params) != len(grads):
        raise ValueError(
            f'{name}: `params` must have one tensor per leaf when weight_decay != 0, '
            f'got {len(params)} for {len(grads)} gradients'
        )
    hyper = (
        float(lr),
        float(momentum),
        float(dampening),
        float(weight_decay),
        bool(nesterov),
        bool(maximize),
        bool(first_step),
    )
    if not grads:
        return
    lists = (grads, bufs, params) if params else (grads, bufs)
    groups = _per_group(*lists)
    if len(groups) > 1:
        # Several kernel calls: check everything first, so a bad leaf in a later group cannot
        # leave the earlier groups updated (one call checks all its leaves before it writes).
        _sgd_update_fake(grads, bufs, params, *hyper)
        if torch.is_grad_enabled():
            read = (*grads, *bufs, *(params if weight_decay != 0.0 else ()))
            if any(t.requires_grad for t in read):
                raise RuntimeError(
                    f'{name}: an input requires grad and grad mode is on; this '
                    'in-place update is not differentiable: call it under '
                    'torch.no_grad() (as torch.optim does)'
                )
    for _, group in groups:
        _ops.sgd_update_(group[0], group[1], group[2] if params else [], *hyper)
