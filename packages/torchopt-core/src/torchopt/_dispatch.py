"""The one place that decides which implementation of a step runs, and checks its inputs first.

Every step of every optimizer goes through the functions of this module, like ``torch.optim``'s
``_default_to_fused_or_foreach``. The paths, fastest first:

* **torch fused kernel** (``torch._fused_adam_``, ``_fused_adamw_``, ``_fused_sgd_``): the
  torch-like :class:`~torchopt.Optimizer` step of ``sgd``/``adam``/``adamw`` with a constant
  learning rate, and the in-place functional Adam direction;
* **accel kernel** (``torchopt_accel``, ``use_accelerated_op=True``), when the plugin has kernels
  for every device of the step — except the in-place functional update on the CPU, where
  torch's fused kernel computes the whole update (learning rate included) in one pass, which
  measured faster than accel's direction kernel plus the scaling (the accelerated path is never
  slower than the one it replaces);
* **torch.optim's op sequence** (:mod:`torchopt._exact_steps`): the torch-like ``RMSprop`` and
  ``Adagrad`` steps and their in-place functional updates (RMSprop's without momentum), bit for
  bit as ``torch.optim`` (no kernel; declared like one, so the same checks and selection apply);
* **foreach** (``torch._foreach_*``, one call per list): every other in-place step, and
  out-of-place steps that autograd does not record;
* **per tensor**: inside ``torch.func`` transforms (foreach ops have no batching rules) and for
  out-of-place ops that autograd records (foreach backward formulas save every input; the
  per-tensor ops save what their own backward needs);
* **differentiable node**: Adam's recorded out-of-place step is one autograd node with an
  exact hand-written backward (:mod:`torchopt.transform._adam_autograd`).

A fused step is declared by the transformation (:class:`FusedStep`, given to
:func:`~torchopt.combine.chain_flat`), never patched onto it; :func:`inplace_step` finds it, also
when the optimizer is the last member of a longer :func:`~torchopt.combine.chain`.

Fast paths never trust their inputs: torch's CPU fused kernels do not check shapes, so before any
kernel writes, :func:`check_like` verifies per leaf that gradient, state buffers and parameter
agree in shape, and raises a ``ValueError`` naming the leaf.

The kernels (torch's fused ones and accel's) take plain tensors only: a tensor subclass such as
the ``DTensor`` parameters of FSDP2's ``fully_shard`` has no rule for most of them
(``_fused_sgd_`` has no sharding strategy), so its steps run the foreach path, as ``torch.optim``
defaults to foreach for ``DTensor``. torch.optim's op sequences take them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import torch

__all__ = [
    'FUSED_DTYPES',
    'FusedStep',
    'Live',
    'adam_path',
    'check_counts',
    'check_like',
    'check_state',
    'compiling',
    'traced_eligible',
    'find_fused',
    'functorch_active',
    'fused_ready',
    'host_values',
    'inplace_step',
    'kernel_eligible',
    'per_tensor',
    'plain',
    'writable',
]

FUSED_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16})
_peek = torch._C._functorch.peek_interpreter_stack
_DTYPE, _SHAPE = attrgetter('dtype'), attrgetter('shape')
_DTYPE_CPU = attrgetter('dtype', 'is_cpu')
_META = attrgetter('shape', 'dtype', 'is_cpu')
_DTYPE_CPU_OF_META = itemgetter(1, 2)
_GET_DEVICE, _IS_CONTIGUOUS = torch.Tensor.get_device, torch.Tensor.is_contiguous
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})


def plain(tensors: Sequence[Any]) -> bool:
    """Whether ``tensors`` are all plain tensors or parameters (no subclass such as ``DTensor``).

    The kernels' condition. A step checks its gradients: a parameter's gradient has its
    parameter's type, and the state buffers are made from the parameters.
    """
    return _PLAIN.issuperset(map(type, tensors))


def functorch_active() -> bool:
    """Whether we run inside a ``torch.func`` transform (vmap, grad, jvp, ...).

    Under ``torch.compile`` this is true even outside every transform: dynamo (torch 2.13)
    evaluates ``peek_interpreter_stack() is not None`` as true. The compiled paths rely on it
    (the per-tensor composed ops it selects are the ones that trace); :func:`traced_eligible`
    is the one check that looks at the real transform level while compiling.
    """
    return _peek() is not None


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing this code."""
    return torch.compiler.is_compiling()


# --- input checks ---------------------------------------------------------------------------------


def _leaf(i: int, treespec: Any) -> str:
    if treespec is not None:
        try:
            import optree

            paths = optree.treespec_paths(treespec)
            if i < len(paths):
                return f'leaf {i} (path {paths[i]!r})'
        except Exception:  # noqa: BLE001 - naming the leaf must never hide the real error
            pass
    return f'leaf {i}'


def _shapes(xs: Sequence[Any]) -> list:
    if compiling():  # dynamo traces comprehensions, not attrgetter calls; shapes become guards
        return [None if x is None else x.shape for x in xs]
    try:
        return list(map(_SHAPE, xs))
    except AttributeError:  # None leaves (no gradient, or a parameter without a value)
        return [None if x is None else x.shape for x in xs]


def check_like(
    where: str,
    what: str,
    ref: Sequence[torch.Tensor | None],
    values: Sequence[Any],
    *,
    ref_name: str = 'gradient',
    treespec: Any = None,
    ref_shapes: list | None = None,
) -> None:
    """Raise ``ValueError`` unless ``values[i]`` has the shape of ``ref[i]`` wherever ``ref[i]`` is set.

    Args:
        where: the transformation or optimizer, for the message.
        what: what ``values`` are (``'state.mu'``, ``'params'``), for the message.
        ref: the reference tensors (``None`` entries are skipped).
        values: tensors that must match ``ref`` leaf by leaf.
        ref_name: what ``ref`` is, for the message.
        treespec: the params' treespec, to name the leaf by its tree path.
        ref_shapes: ``[t.shape for t in ref]``, when the caller has it already.
    """
    if len(values) != len(ref):
        raise ValueError(
            f'{where}: {what} holds {len(values)} tensors but there are {len(ref)} '
            f'{ref_name}s; was the state initialised (or loaded) for these parameters?'
        )
    shapes = _shapes(ref) if ref_shapes is None else ref_shapes
    if shapes == _shapes(values):
        return
    for i, (r, v) in enumerate(zip(ref, values)):
        if r is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise ValueError(
                f'{where}: {_leaf(i, treespec)} has a {ref_name} of shape {tuple(r.shape)} but '
                f'{what} holds {type(v).__name__} there; was the state initialised for a '
                'parameter that had no value (None)?'
            )
        if v.shape != r.shape:
            raise ValueError(
                f'{where}: {_leaf(i, treespec)}: the {ref_name} has shape {tuple(r.shape)} but '
                f'{what} has shape {tuple(v.shape)}; the state was probably initialised (or '
                'loaded) for parameters of other shapes'
            )


def check_counts(where: str, field: str, counts: Sequence[Any]) -> None:
    """Raise a ``TypeError`` if the step counts ``counts`` (one per leaf) are integers.

    TorchOpt 0.7's counts are int64: an in-place step cannot advance them by ``1.0``, so every
    path that advances counts checks them with the state, before anything is written (the
    first present one is checked). Other 0-dim fields (``zero_nans``' bool flags) pass.
    """
    first = next((v for v in counts if v is not None), None)
    if (
        isinstance(first, torch.Tensor)
        and not first.is_floating_point()
        and not first.is_complex()
        and first.dtype is not torch.bool
    ):
        raise TypeError(
            f'{where}: `state.{field}` holds {first.dtype} step counts; they must be '
            "floating-point tensors (as torch.optim's `step`). A state made by TorchOpt 0.7? "
            "An optimizer's load_state_dict converts it; for a functional state, convert its "
            'counts with `.float()`'
        )


def check_state(
    where: str,
    updates: Sequence[Any],
    state: Any,
    scalars: tuple[str, ...] = (),
    treespec: Any = None,
    ref_shapes: list | None = None,
) -> tuple[str, ...]:
    """Check every per-leaf field (a ``list``) of the NamedTuple ``state`` against ``updates``.

    Fields named in ``scalars`` hold one 0-dim tensor per leaf (step counts) and are checked for
    length and for a floating dtype (TorchOpt 0.7's int64 counts raise a ``TypeError`` here,
    before anything is written); the others must match the updates' shapes leaf by leaf. Returns the names of
    the per-leaf fields.
    """
    fields = tuple(f for f in state._fields if isinstance(getattr(state, f), list))
    for f in fields:
        values = getattr(state, f)
        if f in scalars:
            if len(values) != len(updates):
                check_like(where, f'state.{f}', updates, values, treespec=treespec)
            check_counts(where, f, values)
            continue
        if ref_shapes is None:
            ref_shapes = _shapes(updates)
        check_like(where, f'state.{f}', updates, values, treespec=treespec, ref_shapes=ref_shapes)
    return fields


# --- which path -----------------------------------------------------------------------------------


def per_tensor(args: tuple, inplace: bool) -> bool:
    """Whether a multi-tensor op must run per tensor instead of as one ``torch._foreach_*`` call.

    True inside ``torch.func`` transforms, for a tensor subclass (``DTensor`` has no rule for
    several foreach ops, ``_foreach_copy_`` among them; checked on the first tensor), and for an
    out-of-place op that autograd records (checked on the first tensor of each list argument).
    """
    if _peek() is not None:
        return True
    first = args[0][0] if args and isinstance(args[0], (list, tuple)) and args[0] else None
    if isinstance(first, torch.Tensor) and type(first) not in _PLAIN:
        return True
    if inplace or not torch.is_grad_enabled():
        return False
    for a in args:
        if isinstance(a, (list, tuple)):
            if a and isinstance(a[0], torch.Tensor) and a[0].requires_grad:
                return True
        elif isinstance(a, torch.Tensor) and a.requires_grad:
            return True
    return False


def kernel_eligible(*lists: Sequence[torch.Tensor], subclasses: bool = False) -> bool:
    """Whether torch's fused optimizer kernels may run on these tensor lists.

    True when not under a ``torch.func`` transform and every tensor is dense, contiguous, and on
    the same CPU or CUDA device with the same floating dtype as the first one, and the first
    list holds plain tensors (:func:`plain`; ``subclasses=True``: any, for torch.optim's op
    sequences). Shapes are checked separately (:func:`check_like`) and raise instead of
    returning ``False``.
    """
    if _peek() is not None or not lists or not lists[0]:
        return False
    if not (subclasses or plain(lists[0])):
        return False
    first = lists[0][0]
    dtype = first.dtype
    if dtype not in FUSED_DTYPES:
        return False
    ts = list(chain.from_iterable(lists))
    if compiling():  # evaluated once at trace time (tensor metadata is guarded)
        return first.device.type in ('cpu', 'cuda') and all(
            t.dtype == dtype
            and t.device == first.device
            and t.layout == torch.strided
            and t.is_contiguous()
            for t in ts
        )
    # map() with C getters: this check runs on every eager fused step, over every tensor.
    if first.is_cpu:  # (dtype, is_cpu) in one getter call per tensor
        if set(map(_DTYPE_CPU, ts)) != {(dtype, True)}:
            return False
    elif not first.is_cuda:
        return False
    elif set(map(_DTYPE, ts)) != {dtype} or set(map(_GET_DEVICE, ts)) != {first.get_device()}:
        return False
    try:
        return all(map(_IS_CONTIGUOUS, ts))  # also False for a sparse or mkldnn layout
    except RuntimeError:  # "sparse tensors do not have is_contiguous"
        return False


def fused_ready(
    where: str,
    grads: Sequence[torch.Tensor],
    named: Sequence[tuple[str, Sequence[Any]]],
    *,
    treespec: Any = None,
    idx: Sequence[int] | None = None,
    kernel: bool = True,
) -> bool:
    """Check the lists of one fused step and say whether torch's fused kernels may run on them.

    The shape check of :func:`check_like` and the test of :func:`kernel_eligible` in one pass
    over each list: every eager fused step runs this over every tensor, so on the CPU it reads
    ``(shape, dtype, is_cpu)`` with one C getter per tensor and compares whole lists.

    Args:
        where: the optimizer, for the message.
        grads: the present gradients.
        named: ``(what, tensors)`` pairs aligned with ``grads``: the parameters and the state
            buffers the kernel reads and writes (``'params'``, ``'state.mu'``, ...).
        treespec: the params' treespec, to name a leaf by its tree path.
        idx: the positions of ``grads`` among all leaves (``None``: every leaf is present).
        kernel: whether a kernel runs (plain tensors only), not torch.optim's op sequence.

    Returns:
        Whether the kernels may run (same dtype, device and contiguity everywhere).

    Raises:
        ValueError: when a list has another length than ``grads`` or a tensor another shape
            than its gradient, before anything is written.
    """
    lists = [v for _, v in named]
    if grads and not compiling() and _peek() is None and grads[0].is_cpu:
        try:
            meta = list(map(_META, grads))
            same = [len(v) == len(meta) and list(map(_META, v)) == meta for v in lists]
        except AttributeError:  # a None where a tensor belongs: the checks below name it
            same = [False]
        if all(same):
            dtype = meta[0][1]
            if dtype not in FUSED_DTYPES or set(map(_DTYPE_CPU_OF_META, meta)) != {(dtype, True)}:
                return False
            if kernel and not plain(grads):
                return False
            try:
                return all(map(_IS_CONTIGUOUS, chain(grads, *lists)))
            except RuntimeError:  # "sparse tensors do not have is_contiguous"
                return False
    # Something differs (or not the eager CPU case): find what, with the general checks.
    shapes = _shapes(grads)
    for what, values in named:
        if len(values) != len(grads):
            check_like(where, what, grads, values, treespec=treespec)
        if _shapes(values) != shapes:
            if idx is None:
                check_like(where, what, grads, values, treespec=treespec, ref_shapes=shapes)
            else:  # name the leaf by its position in the whole tree
                full = max(idx) + 1
                ref: list[Any] = [None] * full
                vals: list[Any] = [None] * full
                for i, r, v in zip(idx, grads, values):
                    ref[i], vals[i] = r, v
                check_like(where, what, ref, vals, treespec=treespec)
    eligible = kernel_eligible(grads, *lists, subclasses=not kernel)
    return eligible or (kernel and traced_eligible(grads, *lists))


def traced_eligible(*lists: Sequence[torch.Tensor]) -> bool:
    """Under ``torch.compile`` and outside ``torch.func``: may the traced fused Adam math run?

    (:func:`torchopt._kernels._traced_adam_`, the compiled stand-in for torch's fused kernel.)
    The same tensor conditions as :func:`kernel_eligible`, evaluated once at trace time.
    """
    if not compiling() or torch._C._functorch.maybe_current_level() is not None:
        return False
    if not lists or not lists[0] or not plain(lists[0]):
        return False
    first = lists[0][0]
    if first.dtype not in FUSED_DTYPES or first.device.type not in ('cpu', 'cuda'):
        return False
    return all(
        t.dtype == first.dtype
        and t.device == first.device
        and t.layout == torch.strided
        and t.is_contiguous()
        for lst in lists
        for t in lst
    )


def adam_path(inplace: bool, eps_root: float, accel: bool, *lists: Sequence[torch.Tensor]) -> str:
    """The implementation of one ``scale_by_adam`` update on present leaves.

    Returns ``'accel'`` (``torchopt_accel`` kernels, when asked for and available for the
    devices), ``'fused'`` (torch's fused kernel computes the direction in place),
    ``'node'`` (recorded out of place: the autograd node), ``'untracked'`` (out of place, not
    recorded: copies plus the fused kernel or foreach ops) or ``'foreach'`` (every other case;
    per tensor under ``torch.func``).
    """
    if accel and not functorch_active() and accel_kernels(lists[0]) is not None:
        return 'accel'
    if inplace:
        eligible = kernel_eligible(*lists) or traced_eligible(*lists)
        return 'fused' if eps_root == 0.0 and eligible else 'foreach'
    if functorch_active():
        return 'foreach'
    return 'node' if torch.is_grad_enabled() else 'untracked'


def accel_kernels(tensors: Sequence[torch.Tensor]) -> Any | None:
    """The ``torchopt_accel`` module if it has kernels for the devices of ``tensors``, else ``None``.

    Without the plugin this warns once (never a silent fallback), as does a device the build has
    no kernels for.
    """
    from torchopt import accelerated_op  # the facade is light; the plugin loads lazily

    if not plain(tensors):
        subclass = next(type(t) for t in tensors if type(t) not in _PLAIN)
        return accelerated_op.kernels(subclass=subclass)
    if compiling():
        return accelerated_op.kernels({t.device for t in tensors})
    indices = set(map(_GET_DEVICE, tensors))
    if len(indices) == 1:  # one device (the common case): no device object per tensor
        return accelerated_op.kernels({tensors[0].device})
    return accelerated_op.kernels({t.device for t in tensors})


# --- step counts ----------------------------------------------------------------------------------


def host_values(counts: Sequence[torch.Tensor]) -> list[float] | None:
    """The per-leaf step counts as Python floats, or ``None`` where they must stay tensors.

    Counts live on the CPU (as ``torch.optim``'s non-fused ``step``), so reading them is cheap
    and never synchronises a GPU. Inside ``torch.func`` transforms and under ``torch.compile``
    they are not read: the callers compute bias corrections with float64 tensor ops instead.
    """
    if _peek() is not None or compiling():
        return None
    from torchopt import _counts

    base = _counts.packed(counts) if len(counts) > 1 else None
    if base is not None:  # the views of one vector: one read
        return base.tolist()
    if len(counts) > 8:
        return torch.stack(list(counts)).tolist()
    return [c.item() for c in counts]


def uniform(values: list) -> Any:
    """``values[0]`` when every entry is equal (one scalar op), else ``values`` (a scalar list)."""
    first = values[0]
    for v in values:
        if v != first:
            return values
    return first


# --- declared fused steps -------------------------------------------------------------------------


class Live:
    """A hyper-parameter read from a mutable mapping at every step (a param group's ``'lr'``).

    Called with or without a count it returns ``mapping[key]``, so the composed path sees it as a
    schedule; the fused kernels read :meth:`value`. This is how ``opt.param_groups[i]['lr'] = x``
    and ``torch.optim.lr_scheduler`` take effect at the next step without rebuilding anything.
    """

    __slots__ = ('key', 'mapping')

    def __init__(self, mapping: Any, key: str) -> None:
        self.mapping, self.key = mapping, key

    def value(self) -> float:
        """The current value as a Python float."""
        return float(self.mapping[self.key])

    def __call__(self, count: Any = None) -> Any:
        return self.mapping[self.key]

    def __repr__(self) -> str:
        return f'Live({self.key!r}={self.mapping[self.key]!r})'


def resolve(value: Any) -> Any:
    """``value``, or the current value of a :class:`Live` hyper-parameter."""
    return value.value() if isinstance(value, Live) else value


class FusedStep(NamedTuple):
    """A transformation's declaration that one fused kernel computes its whole in-place step.

    ``kind`` is ``'sgd'``, ``'adam'``, ``'adamw'``, ``'amsgrad'`` (Adam's), ``'adamw-amsgrad'`` or
    ``'rmsprop'``/``'adagrad'`` (no kernel: ``torch.optim``'s op sequence,
    :mod:`torchopt._exact_steps`);
    ``hyper`` the kernel's hyper-parameters; ``accel`` asks for ``torchopt_accel``'s kernel. The
    state index ``at`` is where the transformation keeps the kernel's buffers in its chain state.
    """

    kind: str
    hyper: dict
    at: int
    accel: bool = False


def find_fused(impl: Any) -> tuple[tuple | None, FusedStep | None]:
    """``(prefix, fused)``: the fused step declared by ``impl`` or by the last member of its chain.

    ``prefix`` is ``None`` when ``impl`` itself declares the step, else the chain members that run
    before it.
    """
    fused = getattr(impl, 'fused', None)
    if isinstance(fused, FusedStep):
        return None, fused
    from torchopt.base import ChainedGradientTransformation

    if isinstance(impl, ChainedGradientTransformation) and len(impl.transformations) > 1:
        fused = getattr(impl.transformations[-1], 'fused', None)
        if isinstance(fused, FusedStep):
            return impl.transformations[:-1], fused
    return None, None


def writable(grads: Any) -> Any:
    """``grads`` (a list or tuple), with a copy of each leaf whose elements share memory.

    An ``expand``-ed gradient (``torch.autograd.grad`` of ``p.sum()`` returns one) cannot take a
    write, and the in-place steps write their updates into the gradients: such a write failed
    half-way through a step, after the state had been written. ``torch.optim`` never writes a
    gradient, so it takes them. Only strided leaves that are not contiguous are examined
    (``torch._debug_has_internal_overlap``); ``grads`` itself is returned when none needs a copy.
    """
    try:
        if all(map(_IS_CONTIGUOUS, grads)):  # the common case, 0.05 us a leaf
            return grads
    except TypeError:  # a None leaf
        pass
    if all(g is None or g.layout != torch.strided or _IS_CONTIGUOUS(g) for g in grads):
        return grads
    return type(grads)(
        g.clone()
        if g is not None and g.layout == torch.strided and torch._debug_has_internal_overlap(g) == 1
        else g
        for g in grads
    )


def inplace_step(impl: Any, params: tuple, grads: tuple, state: Any, treespec: Any = None) -> Any:
    """One in-place step of the torch-like optimizer: update ``params`` and return the new state.

    Runs the declared fused kernel when the tensors are eligible (gradients may be ``None``: those
    parameters are skipped and their step counts do not advance, as in ``torch.optim``);
    otherwise ``impl.update`` and :func:`~torchopt.apply_updates`. In a chain that ends with an
    optimizer alias, the members before it run first, then the alias's fused step.
    """
    from torchopt import _kernels

    prefix, fused = find_fused(impl)
    if fused is not None and prefix is None:
        new_state = _kernels.run_fused(fused, params, grads, state, treespec)
        if new_state is not None:
            return new_state
    from torchopt.update import apply_updates

    grads = writable(grads)
    if fused is not None and prefix is not None:
        if not isinstance(state, tuple) or len(state) != len(prefix) + 1:
            raise ValueError(
                'The number of updates and states has to be the same in chain! Make sure you '
                'have called init first!'
            )
        head = []
        for t, s in zip(prefix, state[:-1]):
            grads, s = t.update(grads, s, params=params, inplace=True)
            head.append(s)
        grads = tuple(grads)
        last = _kernels.run_fused(fused, params, grads, state[-1], treespec)
        if last is None:
            updates, last = impl.transformations[-1].update(
                grads, state[-1], params=params, inplace=True
            )
            apply_updates(params, updates, inplace=True)
        return (*head, last)
    updates, state = impl.update(grads, state, params=params, inplace=True)
    apply_updates(params, updates, inplace=True)
    return state
