r"""Long unrolls in bounded memory: checkpointed and truncated differentiation through loops.

:func:`unroll` runs ``carry = step(carry, t)`` for ``t = 0, ..., K - 1`` and returns the final
carry, differentiable with respect to the initial carry and to every tensor that ``step``
captures (meta-parameters). Differentiating through ``K`` steps normally keeps every step's
activations and optimizer state alive, :math:`O(K)` memory. With ``checkpoints=c`` the unroll
keeps at most ``c`` carries and recomputes the rest during the backward pass, placing them by
binomial checkpointing (Griewank & Walther's *revolve*), which for ``c`` slots needs the least
recomputation; ``truncate=W`` differentiates through the last ``W`` steps only.

:func:`unroll_module` does the same for ``K`` calls of :meth:`torchopt.MetaOptimizer.step` on an
:class:`torch.nn.Module`, so MAML code written with ``MetaAdam(model)`` keeps its shape.

How the checkpointed unroll works (``docs/long_unrolls.md`` has the measurements):

* **Forward.** Each step runs once, with gradients enabled (the step differentiates its own
  inner loss) on a detached copy of the carry; its graph is walked to find the leaf tensors it
  depends on besides the carry (the closure's meta-parameters), then dropped. The carries on the
  first sweep of the binomial schedule are kept, with the CPU and CUDA random-number states at
  the start of their step. The whole unroll becomes one autograd node whose inputs are the
  initial carry and the closure's leaves.
* **Backward.** The schedule (:mod:`torchopt._revolve`) hands the carries back in reverse
  order, recomputing missing ones from the nearest kept carry and keeping new ones while slots
  are free. For each step :math:`x_{j+1} = f_j(x_j, \theta)` the node re-runs it with
  gradients recorded, from the same random-number state, and takes the vector-Jacobian product
  :math:`(\bar x_j, \bar\theta_j) = \bar x_{j+1}^\top \partial (x_{j+1}) / \partial (x_j, \theta)`
  with :func:`torch.autograd.grad`; the closure's gradient is :math:`\sum_j \bar\theta_j`.
  The random-number state of the caller is restored afterwards.

Memory is ``c`` carries plus one step's activations, whatever ``K`` is; time is about one
extra step per step (the recomputation for the vector-Jacobian product) plus the schedule's
advances (:func:`torchopt._revolve.backward_advances`; for ``c = sqrt(K)`` about 1.3 per step at
``K = 100``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import optree
import torch
from torch import nn

from torchopt import _revolve

__all__ = ['unroll', 'unroll_module']

Carry = TypeVar('Carry')
StepFn = Callable[[Any, int], Any]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'`{name}` must be an int, got {type(value).__name__}')
    if value < minimum:
        raise ValueError(f'`{name}` must be >= {minimum}, got {value}')
    return value


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    return optree.tree_flatten(tree)


def _cut(tree: Any) -> Any:
    """Detach every tensor of ``tree``, keeping its ``requires_grad`` flag (and its aliasing)."""
    leaves, spec = _flatten(tree)
    return optree.tree_unflatten(spec, _fresh(leaves, [_wants_grad(x) for x in leaves]))


_functorch = getattr(torch._C, '_functorch', None)


def _is_wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a tensor of a ``torch.func`` transform (a functorch wrapper)."""
    return _functorch is not None and _functorch.is_functorch_wrapped_tensor(x)


def _wants_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def _fresh(leaves: Sequence[Any], flags: Sequence[bool]) -> list[Any]:
    """New detached tensor objects (``requires_grad`` as ``flags``); aliased leaves stay aliased."""
    memo: dict[int, torch.Tensor] = {}
    out = []
    for x, flag in zip(leaves, flags):
        if isinstance(x, torch.Tensor):
            y = memo.get(id(x))
            if y is None:
                y = x.detach()
                if flag and not _is_wrapped(y):  # under torch.func, detach() is the whole cut
                    y.requires_grad_()
                memo[id(x)] = y
            x = y
        out.append(x)
    return out


_SLOT = object()  # a kept tensor handed to ``save_for_backward``


class _Rng(NamedTuple):
    """Random-number states at the start of a step: CPU, and one per recorded CUDA device."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]


class _State(NamedTuple):
    """A kept carry: its flat leaves (tensors detached), their flags, its structure, its RNG."""

    leaves: list[Any]
    flags: tuple[bool, ...]
    spec: Any
    rng: _Rng | None


def _state(leaves: Sequence[Any], spec: Any, rng: _Rng | None = None) -> _State:
    flags = tuple(_wants_grad(x) for x in leaves)
    return _State(_fresh(leaves, [False] * len(flags)), flags, spec, rng)


class _Engine:
    """Runs and reverses ``n`` steps of ``step`` from ``t0`` with ``c`` slots."""

    def __init__(self, step: StepFn, t0: int, n: int, c: int, devices: list[int]) -> None:
        self.step, self.t0, self.n, self.c = step, t0, n, c
        self.devices = devices
        self.closure: list[torch.Tensor] = []
        self.first: _State | None = None
        self.stored: dict[int, _State] = {}
        self.in_count = 0  # tensor leaves of the initial carry

    # -- random numbers -------------------------------------------------------------------
    def get_rng(self) -> _Rng:
        return _Rng(torch.get_rng_state(), tuple(torch.cuda.get_rng_state(d) for d in self.devices))

    def set_rng(self, rng: _Rng) -> None:
        torch.set_rng_state(rng.cpu)
        for device, state in zip(self.devices, rng.cuda):
            torch.cuda.set_rng_state(state, device)

    # -- one step ---------------------------------------------------------------------------
    def run(self, state: _State, j: int) -> tuple[list[Any], list[Any], Any]:
        """Run step ``j`` on fresh leaves of ``state``: ``(inputs, output leaves, spec)``."""
        inputs = _fresh(state.leaves, state.flags)
        versions = [(x, x._version) for x in inputs if isinstance(x, torch.Tensor)]
        with torch.enable_grad():
            out = self.step(optree.tree_unflatten(state.spec, inputs), self.t0 + j)
        for x, version in versions:
            if x._version != version:
                raise RuntimeError(
                    f'step {self.t0 + j} modified a tensor of its carry in place (shape '
                    f'{tuple(x.shape)}); checkpointed unrolls need steps that return new '
                    'tensors (use the optimizers with `inplace=False`)'
                )
        out_leaves, spec = _flatten(out)
        return inputs, out_leaves, spec

    def advance(self, state: _State, s: int, k: int) -> _State:
        """The carry ``k`` steps after ``state`` (at position ``s``), with its RNG state."""
        assert state.rng is not None
        self.set_rng(state.rng)
        for j in range(s, s + k):
            _, out, spec = self.run(state, j)
            state = _state(out, spec)
            del out
        return state._replace(rng=self.get_rng())

    # -- forward and backward ---------------------------------------------------------------
    def forward(self, leaves: list[Any], spec: Any) -> _State:
        """Run all steps, keep the first sweep's carries, find the closure's leaf tensors."""
        keep = set(_revolve.rightmost_path(self.n, self.c))
        closure: dict[int, torch.Tensor] = {}
        state = _state(leaves, spec)
        self.in_count = sum(isinstance(x, torch.Tensor) for x in leaves)
        for j in range(self.n):
            if j in keep:
                kept = state._replace(rng=self.get_rng())
                if j == 0:
                    self.first = kept
                else:
                    self.stored[j] = kept
            inputs, out, spec = self.run(state, j)
            _collect_leaves(out, {id(x) for x in inputs}, closure)
            state = _state(out, spec)
            del inputs, out  # the step's graph goes here
        self.closure = list(closure.values())
        return state

    def move_first(self) -> list[torch.Tensor]:
        """Hand the initial carry's tensors over to ``save_for_backward``, leaving slots.

        The other kept carries stay here: the first backward pass consumes them (each is freed
        once the schedule is done with it); a later one (``retain_graph=True``) recomputes
        them from the initial carry.
        """
        assert self.first is not None
        leaves = self.first.leaves
        self.first = self.first._replace(
            leaves=[_SLOT if isinstance(x, torch.Tensor) else x for x in leaves]
        )
        return [x for x in leaves if isinstance(x, torch.Tensor)]

    def refill(self, tensors: Sequence[torch.Tensor]) -> _State:
        """The initial carry, its slots filled from :meth:`move_first`'s tensors."""
        assert self.first is not None
        it = iter(tensors)
        leaves = [next(it) if x is _SLOT else x for x in self.first.leaves]
        return self.first._replace(leaves=leaves)

    def backward(
        self, saved: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Vector-Jacobian products: (initial-carry tensor grads, closure grads)."""
        adjoint = list(grads)
        closure_grads: list[torch.Tensor | None] = [None] * len(self.closure)
        schedule = _revolve.reverse(self.n, self.c, self.refill(saved), self.stored, self.advance)
        with torch.random.fork_rng(devices=self.devices), torch.enable_grad():
            for j, state in schedule:
                if all(a is None for a in adjoint):
                    adjoint = [None] * self.in_count
                    break
                assert state.rng is not None
                self.set_rng(state.rng)
                inputs, out, _ = self.run(state, j)
                del state
                adjoint, step_grads = _vjp(inputs, out, adjoint, self.closure, self.t0 + j)
                for k, g in enumerate(step_grads):
                    if g is not None:
                        prev = closure_grads[k]
                        closure_grads[k] = g if prev is None else prev + g
                del inputs, out, step_grads
        schedule.close()
        return adjoint, closure_grads


def _collect_leaves(outputs: Sequence[Any], skip: set[int], found: dict[int, torch.Tensor]) -> None:
    """Add to ``found`` the leaf tensors behind ``outputs`` (by walking their autograd graph)."""
    stack = []
    for x in outputs:
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            continue
        if x.grad_fn is None:
            if id(x) not in skip:
                found.setdefault(id(x), x)
        else:
            stack.append(x.grad_fn)
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, 'variable', None)  # AccumulateGrad: a leaf
        if variable is not None:
            if id(variable) not in skip:
                found.setdefault(id(variable), variable)
            continue
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)


def _vjp(
    inputs: list[Any],
    outputs: list[Any],
    adjoint: list[torch.Tensor | None],
    closure: list[torch.Tensor],
    t: int,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """``adjoint`` times the Jacobian of one recomputed step: (input grads, closure grads)."""
    out_tensors = [x for x in outputs if isinstance(x, torch.Tensor)]
    if len(out_tensors) != len(adjoint):
        raise RuntimeError(
            f'step {t} returned {len(out_tensors)} tensors when recomputed, {len(adjoint)} the '
            'first time: steps must be deterministic functions of the carry and of `t`'
        )
    in_tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    pairs = [(o, a) for o, a in zip(out_tensors, adjoint) if a is not None and o.requires_grad]
    first: dict[int, int] = {}  # an aliased input gets its gradient once, at its first place
    wrt = [
        k for k, x in enumerate(in_tensors) if x.requires_grad and first.setdefault(id(x), k) == k
    ]
    targets = [in_tensors[k] for k in wrt] + closure
    new_adjoint: list[torch.Tensor | None] = [None] * len(in_tensors)
    if not pairs or not targets:
        return new_adjoint, [None] * len(closure)
    seed = _Seed.apply([a for _, a in pairs], *(o for o, _ in pairs))
    grads = torch.autograd.grad(
        seed,
        targets,
        allow_unused=True,
        retain_graph=True,  # the closure's history may be walked
    )
    for k, g in zip(wrt, grads):
        new_adjoint[k] = g
    return new_adjoint, list(grads[len(wrt) :])


class _Seed(torch.autograd.Function):
    """A scalar whose backward hands ``adjoints`` to ``outputs``: ``grad(seed, x)`` is the VJP.

    The same product as ``torch.autograd.grad(outputs, x, adjoints)``, which imports sympy on
    first use for its shape check (20 MB of resident memory and a second).
    """

    @staticmethod
    def forward(ctx: Any, adjoints: list[torch.Tensor], *outputs: torch.Tensor) -> torch.Tensor:
        ctx.adjoints = adjoints
        return torch.zeros((), dtype=outputs[0].dtype, device=outputs[0].device)

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[Any, ...]:
        return (None, *ctx.adjoints)


class _UnrollFunction(torch.autograd.Function):
    """The checkpointed unroll as one autograd node (inputs: carry tensors, closure leaves)."""

    @staticmethod
    def forward(
        ctx: Any,
        engine: _Engine,
        final: list[torch.Tensor],
        flags: list[bool],
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        ctx.engine = engine
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*engine.move_first())
        outputs = tuple(x.detach() for x in final)
        ctx.mark_non_differentiable(*(o for o, f in zip(outputs, flags) if not f))
        return outputs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        if torch.is_grad_enabled():  # create_graph=True: refuse rather than drop 2nd-order terms
            raise RuntimeError(
                'torchopt.unroll(checkpoints=...) cannot be differentiated twice '
                '(create_graph=True); use checkpoints=None for higher-order meta-gradients'
            )
        engine: _Engine = ctx.engine
        carry_grads, closure_grads = engine.backward(ctx.saved_tensors, grads)
        return (None, None, None, *carry_grads, *closure_grads)


def _budget(checkpoints: int | Literal['sqrt'] | None, n: int) -> int | None:
    """The number of slots for ``n`` differentiated steps (``None``: keep everything)."""
    if checkpoints is None:
        return None
    if isinstance(checkpoints, str):
        if checkpoints != 'sqrt':
            raise ValueError(f"`checkpoints` must be an int, 'sqrt' or None, got {checkpoints!r}")
        return max(1, math.isqrt(max(n - 1, 0)) + 1)  # ceil(sqrt(n))
    return _check_int('checkpoints', checkpoints, 1)


def _under_functorch(tensors: Sequence[torch.Tensor]) -> bool:
    if _functorch is None:  # pragma: no cover - every supported torch has it
        return False
    return _functorch.peek_interpreter_stack() is not None or any(map(_is_wrapped, tensors))


def _cuda_devices(tensors: Sequence[torch.Tensor]) -> list[int]:
    """CUDA devices whose random-number state is replayed: the carry's, and the current one."""
    devices = {x.device.index for x in tensors if x.is_cuda and x.device.index is not None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.add(torch.cuda.current_device())
    return sorted(devices)


def unroll(
    step: Callable[[Carry, int], Carry],
    carry: Carry,
    num_steps: int,
    *,
    checkpoints: int | Literal['sqrt'] | None = None,
    truncate: int | None = None,
) -> Carry:
    r"""Run ``carry = step(carry, t)`` for ``t`` in ``range(num_steps)``; return the final carry.

    .. math::

        x_{t+1} = f(x_t, t; \theta), \qquad t = 0, \dots, K - 1,

    where :math:`x` is the carry (any pytree of tensors: parameters, optimizer state, ...) and
    :math:`\theta` every tensor that ``step`` uses besides the carry (meta-parameters it
    captures). :math:`x_K` is differentiable with respect to :math:`x_0` and :math:`\theta`.

    * ``checkpoints=None`` records every step, as the plain loop does: memory grows as
      :math:`O(K)` (activations and optimizer state of every step), nothing is recomputed.
    * ``checkpoints=c`` keeps at most ``c`` carries (the initial one included) and recomputes
      the others during the backward pass, in the binomial schedule of Griewank & Walther's
      *revolve*, the one that needs the fewest recomputed steps for ``c`` slots: memory is ``c``
      carries plus one step's activations whatever ``K`` is. Each step is run once more (with
      its graph) for its vector-Jacobian product, plus the schedule's advances
      (``c = 10``, ``K = 100``: 126 advances). ``checkpoints='sqrt'`` uses
      :math:`c = \lceil \sqrt{K} \rceil`. Random numbers are replayed (CPU and CUDA states
      saved at the start of each kept step), so dropout inside ``step`` gives the same result
      with and without checkpoints.
    * ``truncate=W`` differentiates through the last ``W`` steps only: earlier carries are
      detached (keeping their ``requires_grad`` flags), so :math:`\partial x_K / \partial x_0`
      is not available and the closure's gradient sums over the last ``W`` steps only,
      :math:`\sum_{t \ge K - W} \partial x_K / \partial \theta |_t`. This truncated
      back-propagation is a *biased* estimate of the full meta-gradient, cheaper by the
      steps it skips. It combines with ``checkpoints`` (which then apply to the window).

    Requirements on ``step`` when ``checkpoints`` is set: it must return new tensors rather
    than modify the carry in place (optimizers with ``inplace=False``; checked), and be a
    deterministic function of the carry, ``t``, its closure and the random-number state. It is
    called with gradients enabled (it may differentiate an inner loss itself) on detached
    copies of the carry whose ``requires_grad`` flags match the recorded unroll's.

    Limits of ``checkpoints``: the backward pass cannot itself be differentiated
    (``create_graph=True`` through the unroll raises; higher-order meta-gradients need
    ``checkpoints=None``), and it does not run under :mod:`torch.func` transforms (raises);
    ``checkpoints=None`` and ``truncate`` are plain loops and work wherever ``step`` does,
    ``torch.func.grad`` included. A closure tensor that has a history (a non-leaf, e.g.
    ``lr = log_lr.exp()`` computed outside ``step``) is differentiated through that history to
    its leaves at every recomputed step; gradients reach the leaves (``log_lr``), not the
    non-leaf itself. Under ``torch.no_grad()`` the steps run as a plain loop.

    Args:
        step: ``step(carry, t) -> carry``.
        carry: the initial carry, a pytree (non-tensor leaves are passed along as they are).
        num_steps: the number of steps :math:`K \ge 0`.
        checkpoints: ``None``, the number of carries to keep (``>= 1``), or ``'sqrt'``.
        truncate: differentiate through the last ``truncate`` steps only (``>= 0``).

    Returns:
        The final carry.

    Raises:
        TypeError, ValueError: for invalid arguments.
        RuntimeError: with ``checkpoints``, if ``step`` modified its carry in place, returned
            a different number of tensors when recomputed, or runs under a ``torch.func``
            transform.

    Example:
        Differentiate through 100 gradient-descent steps with 10 checkpoints:

        >>> w0 = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> lr = torch.tensor(0.1, requires_grad=True)
        >>> def step(w, t):
        ...     (g,) = torch.autograd.grad((w ** 2).sum(), w, create_graph=True)
        ...     return w - lr * g
        >>> w = torchopt.unroll(step, w0, 100, checkpoints=10)
        >>> w.sum().backward()
        >>> bool(torch.allclose(w0.grad, torch.full((2,), 0.8 ** 100)))
        True

    """
    if not callable(step):
        raise TypeError(f'`step` must be callable, got {type(step).__name__}')
    num_steps = _check_int('num_steps', num_steps, 0)
    if truncate is not None:
        truncate = _check_int('truncate', truncate, 0)
    start = 0 if truncate is None else max(0, num_steps - truncate)
    slots = _budget(checkpoints, num_steps - start)
    checkpointed = slots is not None and start < num_steps and torch.is_grad_enabled()
    if checkpointed and _under_functorch(
        [x for x in optree.tree_leaves(carry) if isinstance(x, torch.Tensor)]
    ):
        raise RuntimeError(
            'torchopt.unroll(checkpoints=...) does not run under torch.func transforms; '
            'use checkpoints=None (a plain loop) there'
        )
    for t in range(start):
        carry = _cut(step(carry, t))
    if not checkpointed:
        for t in range(start, num_steps):
            carry = step(carry, t)
        return carry
    assert slots is not None
    leaves, spec = _flatten(carry)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    n = num_steps - start
    engine = _Engine(step, start, n, min(slots, n), _cuda_devices(tensors))
    final = engine.forward(leaves, spec)
    inputs = [*tensors, *engine.closure]
    if not any(x.requires_grad for x in inputs):
        return optree.tree_unflatten(final.spec, final.leaves)
    is_tensor = [isinstance(x, torch.Tensor) for x in final.leaves]
    final_tensors = [x for x, keep in zip(final.leaves, is_tensor) if keep]
    flags = [f for f, keep in zip(final.flags, is_tensor) if keep]
    outputs = iter(_UnrollFunction.apply(engine, final_tensors, flags, *inputs))
    del final_tensors
    result = [next(outputs) if keep else x for x, keep in zip(final.leaves, is_tensor)]
    return optree.tree_unflatten(final.spec, result)


def _containers(module: nn.Module) -> tuple[list[dict], list[dict]]:
    """The ``_parameters`` and ``_buffers`` dicts of ``module`` (as :class:`MetaOptimizer`)."""
    modules = list(module.modules())
    params = [m._parameters for m in modules if m._parameters]
    return params, [m._buffers for m in modules if m._buffers]


def _write(containers: Sequence[dict], values: Sequence[dict]) -> None:
    for container, value in zip(containers, values):
        container.update(value)


def unroll_module(
    module: nn.Module,
    optimizer: Any,
    loss_fn: Callable[[int], torch.Tensor],
    num_steps: int,
    *,
    checkpoints: int | Literal['sqrt'] | None = None,
    truncate: int | None = None,
) -> None:
    """Run ``optimizer.step(loss_fn(t))`` for ``t`` in ``range(num_steps)`` through :func:`unroll`.

    The module-API counterpart of :func:`unroll`: afterwards ``module`` holds the final
    (differentiable, non-leaf) parameters and ``optimizer`` the final state, exactly as after
    the plain loop::

        for t in range(num_steps):
            optimizer.step(loss_fn(t))

    so MAML code written with ``torchopt.MetaAdam(model)`` keeps its shape, and with
    ``checkpoints`` runs in bounded memory. The carry is the module's parameters, its buffers
    and the optimizer's states (its ``state_groups``, what ``state_dict()`` returns); each step
    writes them into the module and the optimizer
    (the buffers as copies, so in-place updates such as BatchNorm's running statistics are
    replayed exactly by recomputation), runs the plain step and reads them back, then puts
    the previous ones back (so recomputation in the backward pass leaves the module alone).
    ``loss_fn(t)`` computes the inner loss of step ``t`` with ``module`` (and anything else it
    captures, such as meta-parameters, which get their gradients as in :func:`unroll`).

    Args:
        module: the module whose parameters ``optimizer`` updates (all of them, every group).
        optimizer: a :class:`torchopt.MetaOptimizer` over ``module`` (e.g. ``MetaAdam``).
        loss_fn: ``loss_fn(t)``, the inner loss of step ``t``, computed with ``module``.
        num_steps: the number of steps.
        checkpoints: as in :func:`unroll`.
        truncate: as in :func:`unroll`.

    Example:
        >>> net = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> inner = torchopt.MetaSGD(net, lr=0.1)
        >>> loss_fn = lambda t: torch.nn.functional.mse_loss(net(x), y)
        >>> torchopt.unroll_module(net, inner, loss_fn, 50, checkpoints="sqrt")
        >>> net.weight.grad_fn is not None
        True
        >>> loss_fn(50).backward()  # meta-gradient with respect to the initial parameters

    """
    if not isinstance(module, nn.Module):
        raise TypeError(f'`module` must be an nn.Module, got {type(module).__name__}')
    groups = getattr(optimizer, 'state_groups', None)
    if not callable(getattr(optimizer, 'step', None)) or not isinstance(groups, list):
        raise TypeError(f'`optimizer` must be a MetaOptimizer, got {type(optimizer).__name__}')
    params_c, buffers_c = _containers(module)

    # The states move through ``state_groups`` (TorchOpt's attribute, what ``state_dict()`` and
    # ``load_state_dict()`` read and replace) without load_state_dict's validation: they are
    # the optimizer's own, and validating twice per step would build two fresh states.
    def current() -> tuple[tuple[dict, ...], tuple[dict, ...], tuple[Any, ...]]:
        return (
            tuple(dict(c) for c in params_c),
            tuple(dict(c) for c in buffers_c),
            tuple(optimizer.state_groups),
        )

    def put(params: Sequence[dict], buffers: Sequence[dict], state: Sequence[Any]) -> None:
        _write(params_c, params)
        _write(buffers_c, buffers)
        optimizer.state_groups[:] = state

    def step(carry: tuple, t: int) -> tuple:
        params, buffers, state = carry
        previous = current()
        put(params, optree.tree_map(torch.clone, buffers), state)
        try:
            optimizer.step(loss_fn(t))
            return current()
        finally:
            put(*previous)

    put(*unroll(step, current(), num_steps, checkpoints=checkpoints, truncate=truncate))
