"""The torch-like, in-place :class:`Optimizer` (upstream ``torchopt.optim.Optimizer``).

It is a :class:`torch.optim.Optimizer`, so ``torch.optim.lr_scheduler``, step hooks and training
frameworks that check ``isinstance(opt, torch.optim.Optimizer)`` work with it. Where TorchOpt 0.7
and ``torch.optim`` disagree, ``docs/migration.md`` says what was chosen:

* ``param_groups`` is ``torch.optim``'s list of dicts (``'params'`` plus the group's
  hyper-parameters, readable and writable between steps); TorchOpt's flat tuples are
  ``group['params']``, and ``param_treespecs`` / ``state_groups`` are kept;
* ``state_dict()`` uses ``torch.optim``'s layout and buffer names (``step``, ``exp_avg``, ...),
  so checkpoints move between ``torch.optim`` and ``torchopt``; ``load_state_dict`` also takes
  TorchOpt 0.7's tuple of states, and validates before it changes anything;
* ``zero_grad(set_to_none=False)`` keeps TorchOpt's default.
"""

from __future__ import annotations

import functools
import itertools
import operator
import types
import warnings
import weakref
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from operator import attrgetter
from typing import Any, Callable, ClassVar

import optree
import torch
from torch.optim import optimizer as _torch_optimizer

from torchopt import _checks, _dispatch
from torchopt.base import GradientTransformation, UninitializedState
from torchopt.optim import _options, _state_dict, _state_view

__all__ = ['Optimizer', 'flatten_params']

_GRAD = attrgetter('grad')


def flatten_params(params: Any, name: str = 'params') -> tuple[tuple[torch.Tensor, ...], Any]:
    """Flatten a pytree (or an iterator, e.g. ``model.parameters()``) of tensors."""
    if isinstance(params, (types.GeneratorType, map, filter)) or (
        isinstance(params, Iterable)
        and not isinstance(params, (Sequence, dict, torch.Tensor))
        and not optree.is_namedtuple(params)
    ):
        params = tuple(params)
    leaves, treespec = optree.tree_flatten(params)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f'`{name}` must be a tree of tensors, but it contains a {type(leaf).__name__}'
            )
    return tuple(leaves), treespec


def _is_group(obj: Any) -> bool:
    return isinstance(obj, dict) and 'params' in obj


def _is_named(item: Any) -> bool:
    """Whether ``item`` is a ``(name, tensor)`` pair, as ``model.named_parameters()`` yields."""
    return (
        type(item) is tuple
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def _without_duplicates(
    flat: Sequence[torch.Tensor], names: list[str] | None
) -> tuple[tuple[torch.Tensor, ...], Any, list[str] | None]:
    """A group's parameters with each tensor kept once (its first place), and a warning.

    ``torch.optim`` warns and steps a repeated tensor once per appearance, through one shared
    state; TorchOpt 0.7 took it too. Each tensor is stepped once here, so that the step is the
    one the tensor would get if it were passed once (and no fused kernel sees a tensor twice).
    """
    from torchopt.accelerated_op import _user_stacklevel

    warnings.warn(
        'optimizer contains a parameter group with duplicate parameters: torchopt keeps each '
        'once and steps it once per step (torch.optim steps it once per appearance); pass '
        'each parameter once to silence this',
        UserWarning,
        stacklevel=_user_stacklevel(),
    )
    first: dict[int, int] = {}
    for i, p in enumerate(flat):
        first.setdefault(id(p), i)
    keep = sorted(first.values())
    unique, treespec = flatten_params([flat[i] for i in keep])
    return unique, treespec, None if names is None else [names[i] for i in keep]


def _split_names(params: Any) -> tuple[Any, list[str] | None]:
    """``params`` without the names of ``(name, tensor)`` pairs, and the names (``None``: none).

    As ``torch.optim`` (2.5 and later) takes ``model.named_parameters()`` and keeps the names in
    the group's ``'param_names'``; a mix of named and unnamed parameters is refused as there.
    """
    if isinstance(params, Iterator):
        params = list(params)
    if not isinstance(params, (list, tuple)) or not any(_is_named(x) for x in params):
        return params, None
    if not all(_is_named(x) for x in params):
        raise ValueError(
            'all optimizer params should be with/without names. Some param names are missing'
        )
    return [p for _, p in params], [name for name, _ in params]


def _as_groups(params: Any) -> list[dict]:
    """torch-style groups (a dict with ``'params'`` or a list of them), else one pytree group."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            '`params` must be an iterable of tensors, a tree of tensors or a list of param-group '
            f'dicts, got a single {type(params).__name__}'
        )
    if _is_group(params):
        return [params]
    if isinstance(params, (list, tuple)) and params and all(_is_group(g) for g in params):
        return list(params)
    return [{'params': params}]


class Optimizer(torch.optim.Optimizer):
    """A PyTorch-style optimizer over a :class:`~torchopt.base.GradientTransformation`.

    ``step()`` reads ``p.grad`` and updates the parameters in place (no autograd), through the
    one dispatcher (:mod:`torchopt._dispatch`): torch's fused kernel when the optimizer declares
    one and the tensors are eligible, else ``impl.update(..., inplace=True)`` and
    :func:`~torchopt.apply_updates`.

    Args:
        params: tensors to optimize: any pytree or iterator of tensors (``model.parameters()``),
            or ``torch.optim``-style param-group dicts.
        impl: the transformation, e.g. ``torchopt.adam(1e-3)``. The optimizer classes
            (:class:`~torchopt.Adam`, ...) build one per param group from the group's
            hyper-parameters instead, so groups can differ and change between steps.
    """

    _factory: ClassVar[Callable[..., GradientTransformation] | None] = None
    _fixed: ClassVar[dict[str, Any]] = {}
    _live_lr: ClassVar[bool] = True  # False: the alias needs lr as a number (rebuilt on change)
    # Group values a load_state_dict sets whatever the checkpoint says (torch.optim.AdamW's
    # decoupled_weight_decay=True, which its __setstate__ sets).
    _loads_with: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any, impl: GradientTransformation) -> None:
        if not isinstance(impl, GradientTransformation):
            raise TypeError(f'{impl} (type {type(impl).__name__}) is not a GradientTransformation')
        self._setup(params, impl, {})

    def _setup(
        self,
        params: Any,
        impl: GradientTransformation | None,
        defaults: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> None:
        """Initialise with one ``impl`` for every group, or (``None``) the class's factory.

        ``options`` are ``torch.optim``'s implementation options the class takes
        (:mod:`torchopt.optim._options`): kept in the groups, not given to the factory.
        """
        self._impl: GradientTransformation | None = impl
        self._hyper: tuple[str, ...] = tuple(defaults)
        self._option_keys: tuple[str, ...] = tuple(options or ())
        self._rebuild_on = tuple(k for k in self._hyper if k != 'lr')
        self.param_treespecs: list[Any] = []
        self.state_groups: list[Any] = []
        self._group_impls: list[tuple[Any, GradientTransformation] | None] = []
        # The parameters each group's state was made or loaded for (see _follow_params).
        self._state_params: list[tuple | None] = []
        super().__init__(_as_groups(params), {**defaults, **(options or {})})
        _LIVE[id(self)] = self

    # --- torch.optim.Optimizer plumbing ------------------------------------------------------

    @property  # type: ignore[override]
    def state(self) -> MutableMapping[Any, Any]:
        """``{parameter: {name: tensor}}`` with ``torch.optim``'s buffer names, live and writable.

        As ``torch.optim.Optimizer.state``: the tensors are the optimizer's own, assigning a
        buffer copies into it, ``del opt.state[p]`` resets ``p``'s state, and ``clear()`` or
        ``opt.state = collections.defaultdict(dict)`` resets them all. Entries under names that
        are no optimizer's buffer are the user's own, kept as they are and checkpointed; keys
        that are not parameters of this optimizer map to plain dicts (see
        :mod:`torchopt.optim._state_view`).
        """
        self._follow_params()
        return _state_view.StateView(self)

    @state.setter
    def state(self, value: Any) -> None:
        _state_view.assign(self, value)

    @property
    def impl(self) -> GradientTransformation:
        """The transformation of the first param group (TorchOpt's attribute)."""
        return self.group_impl(0)

    @impl.setter
    def impl(self, value: GradientTransformation) -> None:
        self._impl = value
        self._group_impls = [None] * len(self.param_groups)

    # Positional, params= (TorchOpt) and param_group= (torch.optim) all work; mypy cannot see it.
    def add_param_group(  # type: ignore[override]
        self, params: Any = None, *, param_group: Any = None
    ) -> None:
        """Add a group: a dict with ``'params'`` and hyper-parameters, or any tree of tensors.

        Hyper-parameters not given take the optimizer's defaults; they are validated now. The
        group may be passed positionally or by either keyword: ``params`` (TorchOpt 0.7's name)
        or ``param_group`` (``torch.optim``'s).
        """
        if (params is None) == (param_group is None):
            raise TypeError(
                'add_param_group() takes one group: pass it positionally, as params= '
                '(TorchOpt) or as param_group= (torch.optim)'
            )
        group_or_tree = params if param_group is None else param_group
        group = dict(group_or_tree) if _is_group(group_or_tree) else {'params': group_or_tree}
        group['params'], names = _split_names(group['params'])
        if names is not None:
            group['param_names'] = names
        if any(('param_names' in g) != ('param_names' in group) for g in self.param_groups):
            kind = 'with names' if 'param_names' in group else 'without names'
            raise ValueError(
                'all optimizer param groups should be with/without names. cannot add param '
                f'group {kind} to the optimizer'
            )
        flat, treespec = flatten_params(group['params'])
        if not flat:
            raise ValueError('optimizer got an empty parameter list')
        seen = {id(p) for g in self.param_groups for p in g['params']}
        if any(id(p) in seen for p in flat):
            raise ValueError('some parameters appear in more than one parameter group')
        if len({id(p) for p in flat}) != len(flat):
            flat, treespec, names = _without_duplicates(flat, names)
            if names is not None:
                group['param_names'] = names
        group['params'] = list(flat)
        for key in (*self._hyper, *self._option_keys):
            group.setdefault(key, self.defaults[key])
        if self._option_keys:
            _options.check(type(self).__name__, group, self._option_keys)
        self._build(group)  # validates the hyper-parameters before anything is added
        self.param_groups.append(group)
        self.param_treespecs.append(treespec)
        self.state_groups.append(UninitializedState())
        self._group_impls.append(None)
        self.__dict__.setdefault('_state_params', [None] * (len(self.param_groups) - 1))
        self._state_params.append(None)

    def _key(self, group: dict) -> tuple[bool, tuple]:
        """(whether ``lr`` is read live, the other hyper-parameters) of ``group``."""
        lr = group.get('lr')
        # A one-element tensor is read live too: torch.optim's schedulers fill_() it in place.
        number = (isinstance(lr, (int, float)) and not isinstance(lr, bool)) or (
            isinstance(lr, torch.Tensor) and lr.numel() == 1
        )
        live = self._live_lr and 'lr' in self._hyper and number
        if live:  # read at every step: a change is no reason to rebuild
            return True, tuple(map(group.__getitem__, self._rebuild_on))
        return False, tuple(map(group.__getitem__, self._hyper))

    def _build(self, group: dict) -> tuple[Any, GradientTransformation]:
        if self._impl is not None:
            return None, self._impl
        live, key = self._key(group)
        hyper = {k: group[k] for k in self._hyper}
        if live:
            _checks.check_lr(hyper['lr'])
            hyper['lr'] = _dispatch.Live(group, 'lr')
        factory: Any = type(self)._factory
        return (live, key), factory(**self._fixed, **hyper)

    def group_impl(self, index: int) -> GradientTransformation:
        """The transformation of param group ``index``, rebuilt when its hyper-parameters change.

        ``lr`` is read at every step (a scheduler writing ``group['lr']`` costs nothing); a change
        of any other hyper-parameter rebuilds the group's transformation, keeping its state.
        """
        cached = self._group_impls[index]
        if cached is not None and (
            self._impl is not None or cached[0] == self._key(self.param_groups[index])
        ):
            return cached[1]
        built = self._build(self.param_groups[index])
        self._group_impls[index] = built
        state = self.state_groups[index] if index < len(self.state_groups) else None
        if isinstance(state, tuple):
            self.state_groups[index] = _refit_state(self, index, built[1], state)
        return built[1]

    def impl_with(self, index: int, saved: dict) -> GradientTransformation:
        """The transformation param group ``index`` would run with the hyper-parameters ``saved``.

        ``load_state_dict`` checks a state against it, since the load also sets the group's
        hyper-parameters: a ``torch.optim.SGD(momentum=0.9)`` checkpoint has a momentum buffer
        that ``SGD(momentum=0)`` would not have.
        """
        group, saved = self.param_groups[index], {**saved, **self._loads_with}
        changed = {k: saved[k] for k in self._hyper if k in saved and saved[k] is not group[k]}
        if self._impl is not None or not changed:
            return self.group_impl(index)
        return self._build({**group, **changed})[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The cached transformations read the *original* groups' live lr: rebuild them.
        state['_group_impls'] = [None] * len(self.param_groups)
        state.pop('_param_index', None)  # by id(): rebuilt on first use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if '_rebuild_on' not in state:  # pickled by a torchopt before 0.8's group key
            self._rebuild_on = tuple(k for k in self._hyper if k != 'lr')
        self.__dict__.setdefault('_option_keys', ())
        self._patch_step_function()
        _LIVE[id(self)] = self

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``step`` as ``torch.optim`` does: step pre/post hooks and a profiler range.

        ``torch.optim.Optimizer.__init__`` installs this on the class. The hooks (global, from
        ``torch.optim.optimizer.register_optimizer_step_pre_hook``, and the optimizer's own) run
        in torch's order, a pre-hook may return new ``(args, kwargs)``, and profilers see the
        same ``Optimizer.step#<class>.step`` range. Eagerly the range is torch's C++
        ``_RecordFunctionFast`` (0.2 µs) instead of ``record_function`` (about 7 µs, a third of
        the Python cost of a fused SGD step on 20 tensors); compiled, ``record_function``, which
        dynamo traces.
        """

        @functools.wraps(func)
        def step_with_hooks(*args: Any, **kwargs: Any) -> Any:
            opt = args[0]
            name = f'Optimizer.step#{type(opt).__name__}.step'
            if _dispatch.compiling():
                scope: Any = torch.autograd.profiler.record_function(name)
            else:
                scope = torch._C._profiler._RecordFunctionFast(name)
            with scope:
                pre = itertools.chain(
                    _torch_optimizer._global_optimizer_pre_hooks.values(),
                    opt._optimizer_step_pre_hooks.values(),
                )
                for hook in pre:
                    changed = hook(opt, args, kwargs)
                    if changed is None:
                        continue
                    if not (isinstance(changed, tuple) and len(changed) == 2):
                        raise RuntimeError(
                            f'{func} must return None or a tuple of (new_args, new_kwargs), '
                            f'but got {changed}.'
                        )
                    args, kwargs = changed
                out = func(*args, **kwargs)
                opt._optimizer_step_code()
                post = itertools.chain(
                    opt._optimizer_step_post_hooks.values(),
                    _torch_optimizer._global_optimizer_post_hooks.values(),
                )
                for hook in post:
                    hook(opt, args, kwargs)
            return out

        return step_with_hooks

    # --- the step ------------------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradients: to ``None`` if ``set_to_none`` else to zeros (detached).

        The default is TorchOpt's (``False``); ``torch.optim`` defaults to ``True``.
        """
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def _init_states(self) -> None:
        """Create the state of every param group that has none yet (its first step)."""
        self._follow_params()
        for i, state in enumerate(self.state_groups):
            if isinstance(state, UninitializedState):
                params = tuple(self.param_groups[i]['params'])
                self.state_groups[i] = self.group_impl(i).init(params)
                self._state_params[i] = params

    def _follow_params(self) -> None:
        """Fit the states to parameters added to or removed from a group's ``'params'`` list.

        ``torch.optim`` keys its state by tensor, so code that appends to
        ``opt.param_groups[i]['params']`` (a layer unfrozen in place) gets a fresh state for the
        new parameters at the next step, and the others keep theirs. A group whose list changed
        length or its tensors since its state was made or loaded gets the same: each parameter
        keeps its state (by identity, also when the list was reordered), a new one starts from
        the initial state, a removed one's is let go. Checking costs one identity comparison per
        parameter and step.
        """
        known = self.__dict__.get('_state_params')
        if known is None:  # unpickled from an older version: the states are the groups' now
            self._state_params = [
                tuple(g['params']) if isinstance(s, tuple) else None
                for g, s in zip(self.param_groups, self.state_groups)
            ]
            return
        for i, group in enumerate(self.param_groups):
            n = len(group['params'])
            if self.param_treespecs[i].num_leaves != n:  # also before the first step
                self.param_treespecs[i] = flatten_params(group['params'])[1]
            old, state = known[i], self.state_groups[i]
            if old is None or not isinstance(state, tuple):
                continue
            if len(old) == n and all(map(operator.is_, old, group['params'])):
                continue
            if not _state_dict.per_param_lists(state, len(old)):
                continue  # not a state of these parameters (the step's checks will say)
            params = tuple(group['params'])
            fresh = self.group_impl(i).init(params)
            self.state_groups[i] = _state_dict.regrow(state, fresh, old, params)
            known[i] = params

    def _mark_fused_buffers(self) -> None:
        """Mark the buffers of the groups that run a fused kernel as static for ``torch.compile``.

        The fused kernels update these buffers in place, so the tensors a step reads are the ones
        the next step reads. Marked (``mark_static_address(guard=True)``, what dynamo does to
        ``torch.optim``'s state), each is guarded by its identity instead of a full tensor check
        of dtype, device, shape, strides and dynamic-dimension marks, and dynamo holds it as a
        graph attribute instead of gathering it from the state at every call (inductor still
        checks its size). The composed steps are not marked: compiled, some of them return new
        tensors, which would then recompile every step. A buffer replaced by ``load_state_dict``
        fails its identity guard: one recompilation, which marks the new one.
        """
        for i, state in enumerate(self.state_groups):
            prefix, fused = _dispatch.find_fused(self.group_impl(i))
            if fused is None or prefix is not None or not isinstance(state, tuple):
                continue
            if 0 <= fused.at < len(state):
                for leaf in optree.tree_leaves(state[fused.at]):
                    if isinstance(leaf, torch.Tensor):
                        torch._dynamo.mark_static_address(leaf, guard=True)

    # torch's stub types ``closure`` as returning float; at run time torch.optim returns what the
    # closure returns (a tensor loss), as this does.
    def step(  # type: ignore[override]
        self, closure: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """Update every parameter that has a gradient; return ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compiling = _dispatch.compiling()
        if compiling:
            # Before the state is read: dynamo runs this eagerly while tracing, so the state
            # exists before the graph that uses it and the first step is the only compilation.
            _initialise(id(self))
        else:
            self._init_states()
        with torch.no_grad():
            for i, group in enumerate(self.param_groups):
                params = tuple(group['params'])
                # (dynamo does not trace attrgetter calls; eagerly the C getter is faster)
                grads = tuple(p.grad for p in params) if compiling else tuple(map(_GRAD, params))
                self.state_groups[i] = _dispatch.inplace_step(
                    self.group_impl(i), params, grads, self.state_groups[i], self.param_treespecs[i]
                )
        return loss

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim``'s layout: ``{'state': {...}, 'param_groups': [...]}``.

        ``'state'`` maps parameter indices to their buffers under ``torch.optim``'s names (for
        the optimizers it has); ``'param_groups'`` holds the hyper-parameters and the parameter
        indices. The tensors are the optimizer's own (references), as in ``torch.optim``.
        Hooks added with ``register_state_dict_pre_hook`` / ``register_state_dict_post_hook``
        run as in ``torch.optim``: a post-hook may return a replacement dictionary.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._follow_params()
        state_dict = _state_dict.export(self)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: Any) -> None:
        """Load a state from :meth:`state_dict`, ``torch.optim``, or TorchOpt 0.7's tuple layout.

        Everything is validated first — the number of groups and parameters, each buffer's shape
        against its parameter, the kind of optimizer — and a ``ValueError`` names the group,
        parameter and key that differ; a failed load leaves the optimizer unchanged.
        Hooks added with ``register_load_state_dict_pre_hook`` (which may return a replacement
        dictionary) and ``register_load_state_dict_post_hook`` run as in ``torch.optim``; the
        pre-hooks get a shallow copy, so the caller's dictionary is not modified.
        """
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        states, groups, extras = _state_dict.parse(self, state_dict)
        for group, saved in zip(self.param_groups, groups):
            for key, value in saved.items():
                if key != 'params':
                    group[key] = value
            group.update(self._loads_with)
        self.state_groups[:] = states
        self._state_params = [tuple(g['params']) for g in self.param_groups]
        own = _state_dict.extra_state(self)
        own.clear()
        own.update(extras)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


def _state_layout(impl: GradientTransformation) -> tuple[type, ...] | None:
    """The types of a chain's member states (from an ``init`` on no parameters), or ``None``."""
    try:
        empty = impl.init(())
    except Exception:  # noqa: BLE001  (a member that needs parameters to say: keep the state)
        return None
    return tuple(map(type, empty)) if isinstance(empty, tuple) else None


def _refit_state(opt: Optimizer, index: int, impl: GradientTransformation, state: tuple) -> tuple:
    """Group ``index``'s ``state`` fitted to the chain ``impl`` after a hyper-parameter change.

    A change of ``weight_decay``, ``maximize``, ``momentum`` (as ``OneCycleLR`` cycles it),
    ``dampening``, ``amsgrad`` or ``centered`` can add, drop or change a member of the chain.
    The same state types return ``state`` itself. Otherwise the buffers move by their
    ``torch.optim`` names (:func:`._state_dict.refit`): ``torch.optim`` keeps every buffer it
    has, creates the missing ones at the next step and uses a kept one again when its
    hyper-parameter comes back. A state without such names: each member keeps the state of the
    first unused old member of the same state type, in order, a new member starts from its
    initial state and a dropped member's state is let go.
    """
    layout = _state_layout(impl)
    if layout is None or layout == tuple(map(type, state)):
        return state
    refitted = _state_dict.refit(opt, index, impl)
    if refitted is not None:
        return refitted
    params = tuple(opt.param_groups[index]['params'])
    fresh = impl.init(params)
    used: set[int] = set()
    fitted = []
    for kind, initial in zip(layout, fresh):
        match = next((i for i, s in enumerate(state) if i not in used and type(s) is kind), None)
        if match is None:
            fitted.append(initial)
        else:
            used.add(match)
            fitted.append(state[match])
    return tuple(fitted)


_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@torch.compiler.assume_constant_result
def _initialise(key: int) -> int:
    """Initialise the states of the optimizer ``id() == key`` (run eagerly by dynamo)."""
    opt = _LIVE[key]
    opt._init_states()
    opt._mark_fused_buffers()
    return 0
