"""The ``torch.compile`` path of :func:`~torchopt_implicit.custom_root`.

Under :func:`torch.compile`, dynamo traces an :class:`torch.autograd.Function` by speculating
both its ``forward`` and its ``backward`` into graphs, and the implicit backward (iterative
linear solves with data-dependent stopping, ``torch.autograd.grad`` on a recorded graph, user
callables such as ``functools.partial`` solvers) cannot be captured. So, while compiling:

* the call is flattened with the plain-Python :func:`flatten` below (tensors, tuples, lists,
  dicts, named tuples and Python constants) instead of optree, into a *description*: a nested
  tuple of constants that dynamo can fold;
* the solver's forward is traced into the graph like any other code;
* the backward is one opaque custom op, ``torchopt_implicit::root_vjp``, whose integer key
  (folded at trace time by :func:`vjp_key`) names the call's description; at run time the op
  rebuilds the arguments and runs the eager implicit backward (the same code as outside
  :func:`torch.compile`, so the gradients are identical).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch

__all__ = [
    'CompiledLayout',
    'SolverState',
    'flatten',
    'has_constant_leaf',
    'register_solver',
    'unflatten',
    'vjp_key',
]

# description tags
_TENSOR = 't'
_CONST = 'c'
_TUPLE = 'tuple'
_LIST = 'list'
_DICT = 'dict'
_NAMEDTUPLE = 'namedtuple'
_CONSTANT_TYPES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def flatten(tree: Any, where: str) -> tuple[list[torch.Tensor], Any]:
    """``(tensor leaves, description)`` of ``tree``; ``where`` names it in errors."""
    tensors: list[torch.Tensor] = []
    return tensors, _describe(tree, tensors, where)


def _describe(tree: Any, tensors: list[torch.Tensor], where: str) -> Any:
    if isinstance(tree, torch.Tensor):
        tensors.append(tree)
        return (_TENSOR,)
    if isinstance(tree, _CONSTANT_TYPES):
        return (_CONST, tree)
    if isinstance(tree, tuple) and hasattr(type(tree), '_fields'):
        children = tuple(_describe(child, tensors, where) for child in tree)
        return (_NAMEDTUPLE, type(tree), children)
    if type(tree) is tuple or type(tree) is list:
        children = tuple(_describe(child, tensors, where) for child in tree)
        return (_TUPLE if type(tree) is tuple else _LIST, children)
    if type(tree) is dict:
        keys = tuple(tree)
        children = tuple(_describe(tree[key], tensors, where) for key in keys)
        return (_DICT, keys, children)
    raise TypeError(
        f'custom_root under torch.compile: {where} holds a {type(tree).__name__}; inside a '
        f'compiled region the solver arguments and outputs must be tensors, Python constants '
        f'(numbers, strings, None, dtypes, devices) or tuples, lists, dicts and named tuples of '
        f'them (close over other objects in the solver and optimality functions instead)'
    )


def unflatten(desc: Any, tensors: Iterator[torch.Tensor]) -> Any:
    """Rebuild the tree described by ``desc``, taking its tensor leaves from ``tensors``."""
    tag = desc[0]
    if tag == _TENSOR:
        return next(tensors)
    if tag == _CONST:
        return desc[1]
    if tag == _NAMEDTUPLE:
        return desc[1](*[unflatten(child, tensors) for child in desc[2]])
    if tag == _TUPLE:
        return tuple([unflatten(child, tensors) for child in desc[1]])
    if tag == _LIST:
        return [unflatten(child, tensors) for child in desc[1]]
    return {key: unflatten(child, tensors) for key, child in zip(desc[1], desc[2])}


def has_constant_leaf(desc: Any) -> bool:
    """Whether an output description has a non-tensor leaf other than ``None`` (an empty node)."""
    if desc[0] == _TENSOR:
        return False
    if desc[0] == _CONST:
        return desc[1] is not None
    children = desc[2] if desc[0] in (_NAMEDTUPLE, _DICT) else desc[1]
    return any(has_constant_leaf(child) for child in children)


def _count_tensors(desc: Any) -> int:
    tag = desc[0]
    if tag == _TENSOR:
        return 1
    if tag == _CONST:
        return 0
    children = desc[2] if tag in (_NAMEDTUPLE, _DICT) else desc[1]
    return sum(_count_tensors(child) for child in children)


class SolverState:
    """What the backward of one decorated solver needs: ``F``, the linear solve and ``argnums``."""

    def __init__(
        self, optimality_fn: Callable[..., Any], solve: Callable[..., Any], argnums: tuple[int, ...]
    ) -> None:
        self.optimality_fn = optimality_fn
        self.solve = solve
        self.argnums = argnums


_SOLVER_IDS = itertools.count()
_SOLVERS: dict[int, weakref.ReferenceType[SolverState]] = {}  # solver id -> its state
_CALLS: list[tuple[int, Any, Any, tuple[bool, ...], tuple[int, ...]]] = []  # key -> call
_CALL_KEYS: dict[Any, int] = {}  # (solver id, call desc, output desc, needs) -> key


def register_solver(state: SolverState) -> int:
    """A stable integer id for ``state`` (held weakly: the decorated solver owns it)."""
    solver_id = next(_SOLVER_IDS)
    _SOLVERS[solver_id] = weakref.ref(state, lambda _: _SOLVERS.pop(solver_id, None))
    return solver_id


class CompiledLayout:
    """The eager backward's view of a compiled call (the interface of ``_CallLayout`` it uses)."""

    def __init__(self, call_desc: Any, argnums: tuple[int, ...]) -> None:
        self.argnums = argnums
        self.call_desc = call_desc
        arg_descs = call_desc[0]
        starts = list(itertools.accumulate((_count_tensors(d) for d in arg_descs), initial=0))
        self.diff_inputs = {idx: list(range(starts[idx], starts[idx + 1])) for idx in argnums}

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` of the call with ``tensors`` as its tensor leaves."""
        it = iter(tensors)
        args = [unflatten(desc, it) for desc in self.call_desc[0]]
        return args, unflatten(self.call_desc[1], it)


def _grad_positions(
    call_desc: Any, argnums: tuple[int, ...], needs: tuple[bool, ...]
) -> tuple[int, ...]:
    layout = CompiledLayout(call_desc, argnums)
    return tuple(pos for idx in argnums for pos in layout.diff_inputs[idx] if needs[pos])


@torch._dynamo.assume_constant_result  # pylint: disable=protected-access
def vjp_key(
    solver_id: int, argnums: tuple[int, ...], call_desc: Any, out_desc: Any, needs: tuple[bool, ...]
) -> tuple[int, tuple[int, ...]]:
    """``(key, positions)``: the op key of this call and the tensor inputs it returns grads for.

    Folded to a constant while dynamo traces (it runs once per compilation, in Python).
    """
    entry = (solver_id, call_desc, out_desc, needs)
    key = _CALL_KEYS.get(entry)
    if key is None:
        key = len(_CALLS)
        _CALLS.append(
            (solver_id, call_desc, out_desc, needs, _grad_positions(call_desc, argnums, needs))
        )
        _CALL_KEYS[entry] = key
    return key, _CALLS[key][4]


def _no_alias(grad: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    # a custom op's outputs must not alias its inputs
    ptr = grad.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() == ptr for t in inputs):
        return grad.clone()
    return grad


@torch.library.custom_op('torchopt_implicit::root_vjp', mutates_args=())
def root_vjp(
    key: int,
    inputs: list[torch.Tensor],
    solution: list[torch.Tensor],
    cotangent: list[torch.Tensor],
) -> list[torch.Tensor]:
    """The implicit backward of one compiled call, run eagerly (see the module docstring)."""
    from torchopt_implicit.decorator import _root_vjp  # pylint: disable=import-outside-toplevel

    solver_id, call_desc, out_desc, needs, positions = _CALLS[key]
    state_ref = _SOLVERS.get(solver_id)
    state = state_ref() if state_ref is not None else None
    if state is None:
        raise RuntimeError('custom_root: the backward outlived its decorated solver')
    # A custom op runs below the autograd dispatch key; the implicit backward records a graph of
    # F and differentiates it, so autograd is switched back on for its duration.
    exclude = torch._C._dispatch_tls_local_exclude_set()  # pylint: disable=protected-access
    autograd_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
    autograd_keys = autograd_keys | torch._C.DispatchKeySet(torch._C.DispatchKey.ADInplaceOrView)
    with torch._C._ForceDispatchKeyGuard(  # pylint: disable=protected-access
        torch._C._dispatch_tls_local_include_set(), exclude - autograd_keys
    ):
        layout = CompiledLayout(call_desc, state.argnums)
        sol = unflatten(out_desc, iter(solution))
        cot = unflatten(out_desc, iter(cotangent))
        grads = _root_vjp(state.optimality_fn, state.solve, layout, inputs, sol, cot, needs)
    out = []
    for pos in positions:
        grad = grads[pos]
        out.append(torch.zeros_like(inputs[pos]) if grad is None else _no_alias(grad, inputs))
    return out


@root_vjp.register_fake
def _root_vjp_fake(
    key: int,
    inputs: list[torch.Tensor],
    solution: list[torch.Tensor],
    cotangent: list[torch.Tensor],
) -> list[torch.Tensor]:
    return [torch.empty_like(inputs[pos]) for pos in _CALLS[key][4]]
