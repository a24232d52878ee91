r"""Implicit differentiation of root-finding and fixed-point solvers (upstream ``custom_root``).

If :math:`x^\star(\theta)` solves :math:`F(x, \theta) = 0` and :math:`A = \partial_x F` is
invertible at the solution, the implicit function theorem gives
:math:`\partial_\theta x^\star = -A^{-1} B` with :math:`B = \partial_\theta F`. A vector-Jacobian
product with the output cotangent :math:`\bar g` therefore needs one linear solve:

.. math::

    A^\top u = -\bar g, \qquad \bar\theta = B^\top u .

Both products are VJPs of :math:`F` (:func:`torch.func.vjp`, linearized once per backward).
The solver's output is wrapped in a :class:`torch.autograd.Function` with ``setup_context``
and a generated vmap rule, so :func:`torch.func.vmap`, :func:`torch.func.grad`,
:func:`torch.func.jacrev` and ordinary ``backward()`` all go through the implicit gradient.
Under :func:`torch.compile` a second Function is used, whose backward is one opaque custom op
(:mod:`torchopt_implicit._compiled`): the forward compiles into the graph, first-order gradients
are the eager ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any, Callable, Union

import torch

from torchopt import pytree
from torchopt.typing import TensorTree
from torchopt_implicit import _compiled, linear_solve

__all__ = ['custom_fixed_point', 'custom_root']

Argnums = Union[int, Sequence[int]]
_PREFIX = 'custom_root(optimality_fn)(solver_fn)(*args)'


def _normalize_argnums(argnums: Argnums) -> tuple[int, ...]:
    if isinstance(argnums, bool) or not isinstance(argnums, (int, tuple, list)):
        raise TypeError(f'`argnums` must be an int or a tuple of ints, got {argnums!r}')
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise ValueError('`argnums` must name at least one argument of the solver')
    for num in nums:
        if isinstance(num, bool) or not isinstance(num, int):
            raise TypeError(f'`argnums` must be an int or a tuple of ints, got {argnums!r}')
        if num == 0:
            raise ValueError(
                '`argnums` must not contain 0: argument 0 of the solver is the initial guess of '
                'the solution, which the solution does not depend on; differentiate with respect '
                'to arguments 1, 2, ... instead'
            )
        if num < 0:
            raise ValueError(f'`argnums` must be positive indices, got {argnums!r}')
    if len(set(nums)) != len(nums):
        raise ValueError(f'`argnums` must not repeat an index, got {argnums!r}')
    return nums


def _check_argnums_fit(solver_fn: Callable[..., Any], argnums: tuple[int, ...]) -> None:
    try:
        params = list(inspect.signature(solver_fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: checked at call time
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    too_big = [n for n in argnums if n >= len(positional)]
    if too_big:
        raise ValueError(
            f'`argnums` {argnums} refers to positional argument(s) {too_big} but solver '
            f'{getattr(solver_fn, "__qualname__", solver_fn)!r} only has {len(positional)} '
            f'positional parameter(s) {positional}'
        )


class _CallLayout:
    """How one call's arguments map to the flat tensor inputs of the autograd Function."""

    def __init__(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], argnums: tuple[int, ...]
    ) -> None:
        self.argnums = argnums
        self.arg_specs = []
        self.arg_slices = []  # per positional arg: (start, stop) in the flat leaves
        leaves: list[Any] = []
        for idx, arg in enumerate(args):
            arg_leaves, spec = pytree.tree_flatten(arg, none_is_leaf=True)
            if idx in argnums and not all(isinstance(t, torch.Tensor) for t in arg_leaves):
                raise RuntimeError(
                    f'{_PREFIX}: argument {idx} of function solver_fn specified with `argnums` '
                    f'should be a torch.Tensor or a tree of torch.Tensor, got {type(arg).__name__}'
                )
            self.arg_specs.append(spec)
            self.arg_slices.append((len(leaves), len(leaves) + len(arg_leaves)))
            leaves.extend(arg_leaves)
        # No keyword arguments (the common case): no flatten, which dynamo cannot trace for a dict.
        kw_leaves, self.kw_spec = (
            pytree.tree_flatten(kwargs, none_is_leaf=True) if kwargs else ([], None)
        )
        self.kw_start = len(leaves)
        leaves.extend(kw_leaves)
        self.is_tensor = [isinstance(t, torch.Tensor) for t in leaves]
        self.non_tensors = [t for t in leaves if not isinstance(t, torch.Tensor)]
        self.tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        # tensor-input index of each leaf, and which tensor inputs belong to `argnums`
        self.tensor_index: list[int] = []
        count = 0
        for flag in self.is_tensor:
            self.tensor_index.append(count if flag else -1)
            count += flag
        self.diff_inputs = {
            idx: [self.tensor_index[i] for i in range(*self.arg_slices[idx])] for idx in argnums
        }
        # filled by the forward pass
        self.out_spec: Any = None
        self.num_out = 0
        self.aux_spec: Any = None
        self.aux_is_tensor: list[bool] = []
        self.aux_non_tensors: list[Any] = []

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        """Reassemble ``(args, kwargs)`` with the given tensors in place of the originals."""
        it_t, it_o = iter(tensors), iter(self.non_tensors)
        leaves = [next(it_t) if flag else next(it_o) for flag in self.is_tensor]
        args = [
            pytree.tree_unflatten(spec, leaves[start:stop])
            for spec, (start, stop) in zip(self.arg_specs, self.arg_slices)
        ]
        kwargs = (
            {}
            if self.kw_spec is None
            else pytree.tree_unflatten(self.kw_spec, leaves[self.kw_start :])
        )
        return args, kwargs


def _split_output(output: Any, has_aux: bool) -> tuple[Any, Any]:
    if has_aux:
        if not (isinstance(output, tuple) and len(output) == 2):
            raise RuntimeError(
                f'{_PREFIX}: output of function solver_fn should be a tuple: (output, aux) if '
                f'has_aux is True. Got {output!r}'
            )
        return output
    return output, None


def _check_residual_count(num_residuals: int, num_solution_leaves: int) -> None:
    if num_residuals != num_solution_leaves:
        raise RuntimeError(
            f'optimality_fn must return one residual per leaf of the solution: got '
            f'{num_residuals} residual(s) for {num_solution_leaves} solution leaves'
        )


def _make_matvec(
    fn_x: Callable[[TensorTree], TensorTree], solution: TensorTree
) -> tuple[Callable[[TensorTree], TensorTree], Any]:
    """``u -> A^T u``: the VJP of ``fn_x`` at ``solution`` (linearized once)."""
    residual, vjp_fn, *_ = torch.func.vjp(fn_x, solution)  # (no aux: two values)
    res_leaves, res_spec = pytree.tree_flatten(residual)
    _check_residual_count(len(res_leaves), pytree.tree_structure(solution).num_leaves)

    def matvec(u: TensorTree) -> TensorTree:
        return vjp_fn(pytree.tree_unflatten(res_spec, pytree.tree_leaves(u)))[0]

    return matvec, res_spec


def _record_graph(
    optimality_fn: Callable[..., TensorTree],
    layout: _CallLayout | _compiled.CompiledLayout,
    tensors: Sequence[torch.Tensor],
    solution: TensorTree,
    wanted: list[int],
    needs_grad: Sequence[bool],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Evaluate ``F`` once on fresh leaves under the autograd tape (the first-order fast path).

    Returns the residual leaves, the solution leaves and the differentiated hyper-parameter
    leaves (both fresh ``requires_grad`` leaves of the recorded graph), and the tensor-input
    position of each hyper-parameter leaf.
    """
    fresh = list(tensors)
    theta_pos = [pos for idx in wanted for pos in layout.diff_inputs[idx] if needs_grad[pos]]
    for pos in theta_pos:
        fresh[pos] = tensors[pos].detach().requires_grad_()
    args, kwargs = layout.rebuild(fresh)
    x_leaves = [t.detach().requires_grad_() for t in pytree.tree_leaves(solution)]
    x_tree = pytree.tree_unflatten(pytree.tree_structure(solution), x_leaves)
    with torch.enable_grad():
        residual = optimality_fn(x_tree, *args[1:], **kwargs)
    res_leaves = pytree.tree_leaves(residual)
    _check_residual_count(len(res_leaves), len(x_leaves))
    return res_leaves, x_leaves, [fresh[pos] for pos in theta_pos], theta_pos


class _RecordedVJP:
    """``cotangents -> sum_i <cotangent_i, d output_i / d input>`` through one recorded graph.

    The residual leaves that carry no graph (constant in every input) contribute nothing and are
    dropped once, here, rather than on every product.
    """

    def __init__(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> None:
        self.live = [i for i, out in enumerate(outputs) if out.requires_grad]
        self.outputs = [outputs[i] for i in self.live]
        self.inputs = inputs

    def __call__(self, cotangents: list[torch.Tensor], retain: bool) -> list[torch.Tensor]:
        if not self.outputs or not self.inputs:
            return [torch.zeros_like(t) for t in self.inputs]
        grads = torch.autograd.grad(
            self.outputs,
            self.inputs,
            [cotangents[i] for i in self.live],
            retain_graph=retain,
            allow_unused=True,
        )
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, self.inputs)]


def _root_vjp_recorded(
    optimality_fn: Callable[..., TensorTree],
    solve: Callable[..., TensorTree],
    layout: _CallLayout | _compiled.CompiledLayout,
    tensors: Sequence[torch.Tensor],
    solution: TensorTree,
    cotangent: TensorTree,
    needs_grad: Sequence[bool],
    wanted: list[int],
) -> list[torch.Tensor | None]:
    r"""First-order backward through one recorded graph of ``F``.

    ``F(x, theta)`` is evaluated once; every matvec :math:`A^\top u` and the final
    :math:`B^\top u` are ``torch.autograd.grad`` calls on that retained graph, which skips the
    re-linearization and transform bookkeeping of :func:`torch.func.vjp` (about half the cost
    of a matvec on small problems).
    """
    res_leaves, x_leaves, theta_leaves, theta_pos = _record_graph(
        optimality_fn, layout, tensors, solution, wanted, needs_grad
    )
    x_vjp = _RecordedVJP(res_leaves, x_leaves)
    if isinstance(solution, torch.Tensor):  # one tensor: no tree round trips per product

        def matvec(u: TensorTree) -> TensorTree:
            return x_vjp([u], retain=True)[0]  # type: ignore[list-item]

    else:
        sol_spec = pytree.tree_structure(solution)

        def matvec(u: TensorTree) -> TensorTree:
            return pytree.tree_unflatten(sol_spec, x_vjp(list(pytree.tree_leaves(u)), retain=True))

    transposed: list[Callable[[TensorTree], TensorTree]] = []

    def rmatvec(v: TensorTree) -> TensorTree:  # the recorded products are not differentiable:
        if not transposed:  # normal CG's transpose from torch.func, built on first use
            args, kwargs = layout.rebuild(tensors)
            functional, _ = _make_matvec(lambda x: optimality_fn(x, *args[1:], **kwargs), solution)
            transposed.append(linear_solve.utils.make_rmatvec(functional, solution))
        return transposed[0](v)

    operator = linear_solve.utils.FallbackTranspose(matvec, rmatvec)
    u = solve(operator, pytree.tree_map(torch.neg, cotangent))
    u_leaves = list(pytree.tree_leaves(u))
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    theta_grads = _RecordedVJP(res_leaves, theta_leaves)(u_leaves, retain=False)
    for pos, grad in zip(theta_pos, theta_grads):
        grads[pos] = grad
    return grads


def _root_vjp(
    optimality_fn: Callable[..., TensorTree],
    solve: Callable[..., TensorTree],
    layout: _CallLayout | _compiled.CompiledLayout,
    tensors: Sequence[torch.Tensor],
    solution: TensorTree,
    cotangent: TensorTree,
    needs_grad: Sequence[bool],
) -> list[torch.Tensor | None]:
    wanted = [idx for idx in layout.argnums if any(needs_grad[i] for i in layout.diff_inputs[idx])]
    if not wanted:  # only inputs outside `argnums` want gradients: they get none, no solve needed
        return [None] * len(tensors)
    # First-order backward outside torch.func transforms: one recorded graph, reused.
    # Higher-order (create_graph) and vmap/grad/jacrev go through torch.func.vjp, which composes.
    functorch_level = torch._C._functorch.maybe_current_level()  # pylint: disable=protected-access
    if not torch.is_grad_enabled() and functorch_level is None:
        return _root_vjp_recorded(
            optimality_fn, solve, layout, tensors, solution, cotangent, needs_grad, wanted
        )

    args, kwargs = layout.rebuild(tensors)
    rest = args[1:]

    def fn_x(x: TensorTree) -> TensorTree:
        return optimality_fn(x, *rest, **kwargs)

    matvec, res_spec = _make_matvec(fn_x, solution)
    u = solve(matvec, pytree.tree_map(torch.neg, cotangent))
    u = pytree.tree_unflatten(res_spec, pytree.tree_leaves(u))

    grads: list[torch.Tensor | None] = [None] * len(tensors)

    def fn_theta(*thetas: Any) -> TensorTree:
        call_args = list(rest)
        for idx, theta in zip(wanted, thetas):
            call_args[idx - 1] = theta
        return optimality_fn(solution, *call_args, **kwargs)

    _, vjp_theta, *_ = torch.func.vjp(fn_theta, *(args[idx] for idx in wanted))
    for idx, grad_tree in zip(wanted, vjp_theta(u)):
        for pos, grad in zip(
            layout.diff_inputs[idx], pytree.tree_leaves(grad_tree, none_is_leaf=True)
        ):
            grads[pos] = grad
    return grads


def _make_function(
    solver_fn: Callable[..., Any],
    optimality_fn: Callable[..., TensorTree],
    solve: Callable[..., TensorTree],
    has_aux: bool,
) -> type[torch.autograd.Function]:
    # TorchOpt 0.7's name: the solution's node prints as ``ImplicitMetaGradientBackward``.
    class ImplicitMetaGradient(torch.autograd.Function):  # pylint: disable=abstract-method
        generate_vmap_rule = True

        @staticmethod
        def forward(layout: _CallLayout, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            args, kwargs = layout.rebuild(tensors)
            output, aux = _split_output(solver_fn(*args, **kwargs), has_aux)
            out_leaves, layout.out_spec = pytree.tree_flatten(output)
            if not out_leaves or not all(isinstance(t, torch.Tensor) for t in out_leaves):
                raise RuntimeError(
                    f'{_PREFIX}: output of function solver_fn should be a torch.Tensor or a '
                    f'tuple (tree) of torch.Tensor. Got {output!r}'
                )
            input_ids = {id(t) for t in tensors}
            out = [t.detach().clone() if id(t) in input_ids else t.detach() for t in out_leaves]
            layout.num_out = len(out)
            aux_leaves, layout.aux_spec = pytree.tree_flatten(aux, none_is_leaf=True)
            layout.aux_is_tensor = [isinstance(t, torch.Tensor) for t in aux_leaves]
            layout.aux_non_tensors = [t for t in aux_leaves if not isinstance(t, torch.Tensor)]
            aux_tensors = [t.detach() for t in aux_leaves if isinstance(t, torch.Tensor)]
            return (*out, *aux_tensors)

        @staticmethod
        def setup_context(
            ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]
        ) -> None:
            layout, *tensors = inputs
            ctx.layout = layout
            ctx.save_for_backward(*tensors, *output[: layout.num_out])
            ctx.mark_non_differentiable(*output[layout.num_out :])

        @staticmethod
        def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            layout: _CallLayout = ctx.layout
            saved = ctx.saved_tensors
            num_in = len(saved) - layout.num_out
            tensors, sol_leaves = saved[:num_in], saved[num_in:]
            solution = pytree.tree_unflatten(layout.out_spec, sol_leaves)
            cotangent = pytree.tree_unflatten(layout.out_spec, grad_outputs[: layout.num_out])
            grads = _root_vjp(
                optimality_fn, solve, layout, tensors, solution, cotangent, ctx.needs_input_grad[1:]
            )
            return (None, *grads)

    return ImplicitMetaGradient


def _make_compiled_function(
    solver_fn: Callable[..., Any], solver_id: int, argnums: tuple[int, ...], has_aux: bool
) -> type[torch.autograd.Function]:
    """The autograd Function of the ``torch.compile`` path (see :mod:`torchopt_implicit._compiled`).

    Dynamo traces its ``forward`` (the solver) into the graph; its ``backward`` closes over
    constants only and calls the opaque ``torchopt_implicit::root_vjp`` op.
    """

    class CompiledImplicitRoot(torch.autograd.Function):  # pylint: disable=abstract-method
        @staticmethod
        def forward(
            call_desc: Any, box: list[Any], *tensors: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            it = iter(tensors)
            args = [_compiled.unflatten(desc, it) for desc in call_desc[0]]
            kwargs = _compiled.unflatten(call_desc[1], it)
            output, aux = _split_output(solver_fn(*args, **kwargs), has_aux)
            out_leaves, out_desc = _compiled.flatten(output, 'the output of solver_fn')
            if not out_leaves or _compiled.has_constant_leaf(out_desc):
                raise RuntimeError(
                    f'{_PREFIX}: output of function solver_fn should be a torch.Tensor or a '
                    f'tuple (tree) of torch.Tensor. Got {output!r}'
                )
            aux_leaves, aux_desc = _compiled.flatten(aux, 'the aux output of solver_fn')
            box.append((out_desc, aux_desc, len(out_leaves)))
            out = [
                t.detach().clone() if any(t is s for s in tensors) else t.detach()
                for t in out_leaves
            ]
            return (*out, *[t.detach() for t in aux_leaves])

        @staticmethod
        def setup_context(
            ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]
        ) -> None:
            call_desc, box, *tensors = inputs
            out_desc, _, num_out = box[-1]
            ctx.call_desc, ctx.out_desc, ctx.num_out = call_desc, out_desc, num_out
            ctx.save_for_backward(*tensors, *output[:num_out])
            ctx.mark_non_differentiable(*output[num_out:])

        @staticmethod
        def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            saved = ctx.saved_tensors
            num_in = len(saved) - ctx.num_out
            needs = tuple(ctx.needs_input_grad[2:])
            key, positions = _compiled.vjp_key(
                solver_id, argnums, ctx.call_desc, ctx.out_desc, needs
            )
            grads: list[torch.Tensor | None] = [None] * num_in
            if positions:
                computed = _compiled.root_vjp(
                    key,
                    list(saved[:num_in]),
                    list(saved[num_in:]),
                    list(grad_outputs[: ctx.num_out]),
                )
                for pos, grad in zip(positions, computed):
                    grads[pos] = grad
            return (None, None, *grads)

    return CompiledImplicitRoot


def _compiled_call(
    function: type[torch.autograd.Function],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    argnums: tuple[int, ...],
    has_aux: bool,
) -> Any:
    """One call of the decorated solver while dynamo traces it."""
    arg_descs = []
    tensors: list[torch.Tensor] = []
    for idx, arg in enumerate(args):
        arg_tensors, desc = _compiled.flatten(arg, f'argument {idx} of solver_fn')
        if idx in argnums and _compiled.has_constant_leaf(desc):
            raise RuntimeError(
                f'{_PREFIX}: argument {idx} of function solver_fn specified with `argnums` '
                f'should be a torch.Tensor or a tree of torch.Tensor, got {type(arg).__name__}'
            )
        arg_descs.append(desc)
        tensors.extend(arg_tensors)
    kw_tensors, kw_desc = _compiled.flatten(kwargs, 'the keyword arguments of solver_fn')
    tensors.extend(kw_tensors)
    box: list[Any] = []
    call_desc = (tuple(arg_descs), kw_desc)
    if torch.is_grad_enabled():
        flat = function.apply(call_desc, box, *tensors)
    else:  # no gradient can flow (and dynamo mis-calls a setup_context forward under no_grad)
        flat = function.forward(call_desc, box, *tensors)
    out_desc, aux_desc, num_out = box[-1]
    output = _compiled.unflatten(out_desc, iter(flat[:num_out]))
    if not has_aux:
        return output
    return output, _compiled.unflatten(aux_desc, iter(flat[num_out:]))


def _custom_root(
    solver_fn: Callable[..., Any],
    optimality_fn: Callable[..., TensorTree],
    solve: Callable[..., TensorTree],
    argnums: tuple[int, ...],
    has_aux: bool,
) -> Callable[..., Any]:
    _check_argnums_fit(solver_fn, argnums)
    try:
        signature: inspect.Signature | None = inspect.signature(solver_fn)
    except (TypeError, ValueError):
        signature = None
    function = _make_function(solver_fn, optimality_fn, solve, has_aux)
    state = _compiled.SolverState(optimality_fn, solve, argnums)  # owned by the wrapper below
    compiled_function = _make_compiled_function(
        solver_fn, _compiled.register_solver(state), argnums, has_aux
    )

    @functools.wraps(solver_fn)
    def wrapped_solver_fn(*args: Any, **kwargs: Any) -> Any:
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = bound.args, bound.kwargs
        missing = [idx for idx in argnums if idx >= len(args)]
        if missing:
            raise TypeError(
                f'{_PREFIX}: `argnums` refers to positional argument(s) {missing} but only '
                f'{len(args)} positional argument(s) were given'
            )
        if torch.compiler.is_compiling():
            return _compiled_call(compiled_function, tuple(args), dict(kwargs), argnums, has_aux)
        layout = _CallLayout(tuple(args), dict(kwargs), argnums)
        flat = function.apply(layout, *layout.tensors)
        output = pytree.tree_unflatten(layout.out_spec, flat[: layout.num_out])
        if not has_aux:
            return output
        it_t, it_o = iter(flat[layout.num_out :]), iter(layout.aux_non_tensors)
        aux_leaves = [next(it_t) if flag else next(it_o) for flag in layout.aux_is_tensor]
        return output, pytree.tree_unflatten(layout.aux_spec, aux_leaves)

    wrapped_solver_fn._implicit_state = state  # type: ignore[attr-defined]  # keeps it alive
    return wrapped_solver_fn


def custom_root(
    optimality_fn: Callable[..., TensorTree],
    argnums: Argnums,
    has_aux: bool = False,
    solve: Callable[..., TensorTree] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorator adding implicit differentiation to a root-finding solver.

    ``solver_fn(params, *args, **kwargs)`` returns :math:`x^\star` with
    ``optimality_fn(x_star, *args, **kwargs) == 0``. The decorated solver returns the same value
    (detached from the solver's own graph), and gradients of it with respect to the arguments
    listed in ``argnums`` come from the implicit function theorem (see the module docstring):
    solve :math:`(\partial_x F)^\top u = -\bar g` with ``solve``, then
    :math:`\bar\theta = (\partial_\theta F)^\top u`.

    The solver runs without an autograd tape (use :func:`torch.enable_grad` inside it if it
    needs one). Its keyword arguments are bound to its signature (defaults applied) and passed
    to ``optimality_fn`` by name. The decorated solver composes with ``backward()``,
    :func:`torch.func.grad`, :func:`torch.func.jacrev` and :func:`torch.func.vmap` (the solver
    and ``optimality_fn`` must then be vmap-able themselves).

    Args:
        optimality_fn: :math:`F(x, *args, **kwargs)`, returning a residual with the structure of
            the solution.
        argnums: index or tuple of indices of the solver's positional arguments to
            differentiate (each a tensor or a tree of tensors). ``0`` (the initial guess) is
            not allowed.
        has_aux: the solver returns ``(solution, aux)``; ``aux`` is passed through and not
            differentiated.
        solve: linear solver ``solve(matvec, b) -> x``; defaults to
            :func:`~torchopt_implicit.linear_solve.solve_normal_cg` (as upstream).
            :func:`~torchopt_implicit.linear_solve.solve_cg` is faster when
            :math:`\partial_x F` is symmetric positive definite (e.g. :math:`F = \nabla_x f` of a
            strictly convex :math:`f`).

    Returns:
        A decorator for ``solver_fn``.

    Raises:
        TypeError: at decoration time, if ``argnums`` holds something other than ints or
            ``solve`` is not callable.
        ValueError: at decoration time, if ``argnums`` contains 0, repeats an index or points
            past the solver's positional parameters.

    Example:
        >>> def stationary(x, lam, X, y):  # ridge: grad of 0.5||Xx - y||^2 + 0.5 lam ||x||^2
        ...     return X.T @ (X @ x - y) + lam * x
        >>> @custom_root(stationary, argnums=1, solve=torchopt.linear_solve.solve_cg())
        ... def ridge(init, lam, X, y):
        ...     return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1]), X.T @ y)
    """
    argnums = _normalize_argnums(argnums)
    if solve is None:
        solve = linear_solve.solve_normal_cg()
    elif not callable(solve):
        raise TypeError(f'`solve` must be a callable solve(matvec, b) -> x, got {solve!r}')

    def decorator(solver_fn: Callable[..., Any]) -> Callable[..., Any]:
        return _custom_root(solver_fn, optimality_fn, solve, argnums, has_aux)

    return decorator


def custom_fixed_point(
    fixed_point_fn: Callable[..., TensorTree],
    argnums: Argnums,
    has_aux: bool = False,
    solve: Callable[..., TensorTree] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorator adding implicit differentiation to a fixed-point solver.

    The solver returns :math:`x^\star = T(x^\star, \theta)`; this is :func:`custom_root` with the
    optimality function :math:`F(x, \theta) = T(x, \theta) - x`.

    Args:
        fixed_point_fn: :math:`T(x, *args, **kwargs)`, returning a tree shaped like ``x``.
        argnums: as in :func:`custom_root`.
        has_aux: as in :func:`custom_root`.
        solve: as in :func:`custom_root` (default ``solve_normal_cg()``;
            :func:`~torchopt_implicit.linear_solve.solve_gmres` suits the non-symmetric
            :math:`I - \partial_x T`).

    Returns:
        A decorator for the fixed-point solver.
    """

    def optimality_fn(x: TensorTree, *args: Any, **kwargs: Any) -> TensorTree:
        return pytree.tree_map(torch.sub, fixed_point_fn(x, *args, **kwargs), x)

    functools.update_wrapper(optimality_fn, fixed_point_fn)
    return custom_root(optimality_fn, argnums, has_aux=has_aux, solve=solve)
