"""Module-state utilities (upstream ``torchopt.utils``).

Save, restore, clone and detach the state of an :class:`torch.nn.Module` or of a
:class:`torchopt.MetaOptimizer`. The typical use is truncated back-propagation in bilevel
optimization::

    state = torchopt.extract_state_dict(net, by='reference')  # before the inner loop
    for _ in range(inner_steps):
        inner_opt.step(inner_loss(net))  # net.weight becomes a non-leaf tensor
    outer_loss(net).backward()
    torchopt.recover_state_dict(net, state)  # back to the saved tensors
    torchopt.stop_gradient(net)  # or cut the graph instead of restoring

Tensors are replicated according to a *copy mode* (``by``):

* ``'reference'`` (alias ``'ref'``): the very same tensor objects (``t.to(device)`` when a
  ``device`` is given, which records a ``ToCopyBackward`` node);
* ``'copy'`` (alias ``'clone'``): ``t.clone()`` (then ``.to(device)``), still connected to the
  graph of ``t`` through a ``CloneBackward`` node;
* ``'deepcopy'`` (alias ``'deepclone'``): a detached copy with the same ``requires_grad``, an
  :class:`torch.nn.Parameter` again if ``t`` was one.

An unknown mode raises an error naming ``by`` that is both a :class:`ValueError` and, as
upstream's ``assert`` raised, an :class:`AssertionError`, so code written for either catches it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, cast, overload

import optree
import torch
from torch import nn

from torchopt import _checks
from torchopt.typing import Device, ModuleTensorContainers, OptState, TensorContainer, TensorTree

if TYPE_CHECKING:
    from torchopt.optim.meta.base import MetaOptimizer

__all__ = [
    'ModuleState',
    'extract_state_dict',
    'module_clone',
    'module_detach_',
    'recover_state_dict',
    'stop_gradient',
]

CopyMode = Literal['reference', 'copy', 'deepcopy', 'ref', 'clone', 'deepclone']

_COPY_MODES = {
    'reference': 'reference',
    'ref': 'reference',
    'copy': 'copy',
    'clone': 'copy',
    'deepcopy': 'deepcopy',
    'deepclone': 'deepcopy',
}


class ModuleState(NamedTuple):
    """The state of a module, as returned by :func:`extract_state_dict`.

    Attributes:
        params: one dict per (sub)module with a non-empty ``_parameters`` dict, in
            :func:`extract_module_containers` order (``None`` entries left out).
        buffers: the same for ``_buffers`` (empty when extracted with ``with_buffers=False``).
        visual_contents: ``{grad_fn: (name, tensor)}`` for non-leaf parameters and
            ``{tensor: name}`` for leaf ones, for ``torchopt.visual.make_dot``; ``None`` unless
            extracted with ``enable_visual=True``.
        detach_buffers: whether :func:`recover_state_dict` deep-copies the buffers again.

    """

    params: tuple[TensorContainer, ...]
    buffers: tuple[TensorContainer, ...]
    visual_contents: dict | None = None
    detach_buffers: bool = False


# ----------------------------------------------------------------------------------------------
# Argument checks and the replicate functions
# ----------------------------------------------------------------------------------------------


def _canonical_mode(by: Any) -> str:
    if not isinstance(by, str) or by not in _COPY_MODES:
        raise _checks.ArgumentError(
            '`by` must be one of ' + ', '.join(repr(mode) for mode in _COPY_MODES) + f', got {by!r}'
        )
    return _COPY_MODES[by]


def _canonical_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(
            f'`device` must be a torch.device, a str, an int or None, got {type(device).__name__}'
        )
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as ex:
        raise ValueError(f'`device` is not a valid device: {device!r}') from ex


def _deepcopy_tensor(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """Copy ``t`` detached (to ``device``), keeping ``requires_grad`` and the Parameter class."""
    out = t.detach().to(device=device if device is not None else t.device, copy=True)
    if isinstance(t, nn.Parameter):
        return nn.Parameter(out, requires_grad=t.requires_grad)
    return out.requires_grad_(t.requires_grad)


def _replicator(mode: str, device: torch.device | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the function that replicates one tensor under the canonical copy ``mode``."""
    if mode == 'reference':
        if device is None:
            return lambda t: t
        return lambda t: t.to(device=device)
    if mode == 'copy':
        if device is None:
            return lambda t: t.clone()
        return lambda t: t.clone().to(device=device)
    return lambda t: _deepcopy_tensor(t, device)


def _is_meta_optimizer(target: Any) -> bool:
    from torchopt.optim.meta.base import MetaOptimizer

    return isinstance(target, MetaOptimizer)


def _is_optimizer(target: Any) -> bool:
    from torchopt.optim.base import Optimizer

    return isinstance(target, Optimizer)


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------


def extract_module_containers(
    module: nn.Module, with_buffers: bool = True
) -> tuple[ModuleTensorContainers, ModuleTensorContainers]:
    """Return the non-empty ``_parameters`` (and ``_buffers``) dicts of ``module``'s modules.

    In ``module.modules()`` order, each shared module once. The dicts are the module's own, so
    writing into them rebinds the module's tensors (this is how :class:`torchopt.MetaOptimizer`
    writes its updated parameters back).

    Args:
        module: the module to inspect.
        with_buffers: also collect the ``_buffers`` dicts (otherwise the second tuple is empty).

    Returns:
        ``(params_containers, buffers_containers)``, two tuples of dicts.

    Raises:
        TypeError: if ``module`` is not an :class:`torch.nn.Module`.

    """
    if not isinstance(module, nn.Module):
        raise TypeError(f'`module` must be an nn.Module, got {type(module).__name__}')
    params: list[TensorContainer] = []
    buffers: list[TensorContainer] = []
    for m in module.modules():  # modules() already visits a shared module once
        if m._parameters:
            params.append(cast(TensorContainer, m._parameters))
        if with_buffers and m._buffers:
            buffers.append(m._buffers)
    return tuple(params), tuple(buffers)


# ----------------------------------------------------------------------------------------------
# stop_gradient / module_detach_
# ----------------------------------------------------------------------------------------------


def _detach_in_place(t: torch.Tensor) -> None:
    requires_grad = t.requires_grad
    t.detach_().requires_grad_(requires_grad)


def stop_gradient(target: ModuleState | nn.Module | MetaOptimizer | TensorTree) -> None:
    r"""Cut, in place, the graph behind every tensor of ``target``.

    Each tensor ``t`` becomes ``t.detach_().requires_grad_(t.requires_grad)``: its value and
    ``requires_grad`` flag are kept, its ``grad_fn`` is dropped, so later gradients stop at
    ``t``. Because the tensors are modified in place, every holder of a reference (the module,
    a saved :class:`ModuleState`, the optimizer) sees the cut.

    Args:
        target: one of

            * a :class:`ModuleState` (its params and buffers; ``visual_contents`` is left alone);
            * an :class:`torch.nn.Module` (only ``module.parameters()``, not buffers, as upstream);
            * a :class:`torchopt.MetaOptimizer` (the tensors of its ``state_dict()``);
            * any tree of tensors (non-tensor leaves such as step counts are skipped).

    Raises:
        TypeError: if ``target`` is a single non-tensor object (not a container).

    """
    if isinstance(target, ModuleState):
        leaves = optree.tree_leaves((target.params, target.buffers))
    elif isinstance(target, nn.Module):
        leaves = list(target.parameters())
    elif _is_meta_optimizer(target):
        leaves = optree.tree_leaves(cast(Any, target).state_dict())
    else:
        leaves = optree.tree_leaves(target)
        if len(leaves) == 1 and leaves[0] is target and not isinstance(target, torch.Tensor):
            raise TypeError(
                '`target` must be a ModuleState, an nn.Module, a MetaOptimizer or a tree of '
                f'tensors, got {type(target).__name__}'
            )
    for t in leaves:
        if isinstance(t, torch.Tensor):
            _detach_in_place(t)


def module_detach_(
    target: ModuleState | nn.Module | MetaOptimizer | TensorTree,
) -> ModuleState | nn.Module | MetaOptimizer | TensorTree:
    """Call :func:`stop_gradient` on ``target`` and return ``target`` (for chaining)."""
    stop_gradient(target)
    return target


# ----------------------------------------------------------------------------------------------
# extract_state_dict / recover_state_dict
# ----------------------------------------------------------------------------------------------


def _visual_contents(module: nn.Module, prefix: str) -> dict[Any, Any]:
    contents: dict[Any, Any] = {}
    for name, t in module.named_parameters():
        if t.grad_fn is None:
            contents[t] = prefix + name
        elif t.grad_fn in contents:
            # One multi-output node (a foreach update) made several parameters: one label.
            names, first = contents[t.grad_fn]
            contents[t.grad_fn] = (f'{names}, {prefix}{name}', first)
        else:
            contents[t.grad_fn] = (prefix + name, t)
    return contents


@overload
def extract_state_dict(
    target: nn.Module,
    *,
    by: CopyMode = ...,
    device: Device | None = ...,
    with_buffers: bool = ...,
    detach_buffers: bool = ...,
    enable_visual: bool = ...,
    visual_prefix: str = ...,
) -> ModuleState: ...


@overload
def extract_state_dict(
    target: MetaOptimizer,
    *,
    by: CopyMode = ...,
    device: Device | None = ...,
    with_buffers: bool = ...,
    detach_buffers: bool = ...,
    enable_visual: bool = ...,
    visual_prefix: str = ...,
) -> tuple[OptState, ...]: ...


def extract_state_dict(
    target: nn.Module | MetaOptimizer,
    *,
    by: CopyMode = 'reference',
    device: Device | None = None,
    with_buffers: bool = True,
    detach_buffers: bool = False,
    enable_visual: bool = False,
    visual_prefix: str = '',
) -> ModuleState | tuple[OptState, ...]:
    """Extract the tensors of a module or the state of a meta-optimizer.

    The result can be handed to :func:`recover_state_dict` later to rebind the target to the
    extracted tensors. With ``by='reference'`` the extracted tensors *are* the target's, so an
    in-place change of one shows in the other; use ``'deepcopy'`` for an independent snapshot.

    Args:
        target: an :class:`torch.nn.Module` or a :class:`torchopt.MetaOptimizer`.
        by: the copy mode: ``'reference'``/``'ref'``, ``'copy'``/``'clone'`` or
            ``'deepcopy'``/``'deepclone'`` (see the module docstring).
        device: move the extracted tensors to this device (``None``: stay where they are).
        with_buffers: also extract the buffers of a module.
        detach_buffers: deep-copy the buffers of a module whatever ``by`` says, and make
            :func:`recover_state_dict` deep-copy them again when restoring.
        enable_visual: fill ``visual_contents`` (module targets only) with
            ``{grad_fn: (visual_prefix + name, tensor)}`` for non-leaf parameters and
            ``{tensor: visual_prefix + name}`` for leaf ones (the target's own tensors). When
            one multi-output node produced several parameters (a foreach update does), its
            entry names them all, comma-separated, with the first parameter's tensor.
        visual_prefix: the prefix of the names in ``visual_contents``.

    Returns:
        A :class:`ModuleState` for a module; for a meta-optimizer, a tuple of optimizer states
        (one per parameter group) with every tensor replicated and other leaves kept.

    Raises:
        ValueError: if ``by`` is not a copy mode (the error is also an ``AssertionError``, as
            upstream's), or ``device`` is not a valid device.
        TypeError: if ``target`` is neither a module nor a meta-optimizer.

    """
    mode = _canonical_mode(by)
    dev = _canonical_device(device)
    replicate = _replicator(mode, dev)

    if isinstance(target, nn.Module):
        params_containers, buffers_containers = extract_module_containers(target, with_buffers)
        replicate_buffer = _replicator('deepcopy', dev) if detach_buffers else replicate
        params = tuple(
            type(c)((k, replicate(v)) for k, v in c.items() if v is not None)
            for c in params_containers
        )
        buffers = tuple(
            type(c)((k, replicate_buffer(v)) for k, v in c.items() if v is not None)
            for c in buffers_containers
        )
        visual = _visual_contents(target, visual_prefix) if enable_visual else None
        return ModuleState(
            params=params,
            buffers=buffers,
            visual_contents=visual,
            detach_buffers=bool(detach_buffers),
        )

    if _is_meta_optimizer(target) or _is_optimizer(target):
        state = (cast(Any, target).state_groups if _is_optimizer(target)
                 else cast(Any, target).state_dict())  # fmt: skip
        return tuple(
            optree.tree_map(
                lambda x: replicate(x) if isinstance(x, torch.Tensor) else x, tuple(state)
            )
        )

    raise TypeError(
        f'`target` must be an nn.Module or a MetaOptimizer, got {type(target).__name__}'
    )


def _check_containers(
    kind: str, targets: Sequence[TensorContainer], saved: Sequence[TensorContainer]
) -> None:
    if len(targets) != len(saved):
        raise ValueError(
            f'`state` does not match `target`: it holds {len(saved)} {kind} dicts, the module '
            f'has {len(targets)} non-empty ones'
        )
    for tgt, src in zip(targets, saved):
        unknown = set(src) - set(tgt)
        if unknown:
            raise ValueError(
                f'`state` does not match `target`: {kind} {sorted(unknown)} are not in the module'
            )


def recover_state_dict(
    target: nn.Module | MetaOptimizer, state: ModuleState | Sequence[OptState]
) -> None:
    """Rebind ``target`` to a state extracted by :func:`extract_state_dict`.

    For a module, each saved dict is written into the matching ``_parameters``/``_buffers``
    dict (``container.update(saved)``): the module then holds the saved tensor objects, not
    copies (buffers are deep-copied again when ``state.detach_buffers`` is set). A state
    extracted with ``with_buffers=False`` leaves the buffers alone. For a meta-optimizer,
    ``target.load_state_dict(state)``.

    Args:
        target: an :class:`torch.nn.Module` or a :class:`torchopt.MetaOptimizer`.
        state: a :class:`ModuleState` (module) or a sequence of optimizer states (optimizer).

    Raises:
        TypeError: if ``target`` is neither a module nor a meta-optimizer, or ``state`` is not
            of the matching kind.
        ValueError: if ``state`` was extracted from a differently structured target.

    """
    if isinstance(target, nn.Module):
        if not isinstance(state, ModuleState):
            raise TypeError(
                f'`state` must be a ModuleState for an nn.Module target, got {type(state).__name__}'
            )
        params_containers, buffers_containers = extract_module_containers(target, True)
        _check_containers('parameter', params_containers, state.params)
        buffers: Sequence[TensorContainer] = state.buffers
        if buffers:
            _check_containers('buffer', buffers_containers, buffers)
            if state.detach_buffers:
                deepcopy = _replicator('deepcopy', None)
                buffers = [
                    type(c)((k, None if v is None else deepcopy(v)) for k, v in c.items())
                    for c in buffers
                ]
        for tgt, src in itertools.chain(
            zip(params_containers, state.params), zip(buffers_containers, buffers)
        ):
            tgt.update(src)
        return

    if _is_meta_optimizer(target) or _is_optimizer(target):
        if isinstance(state, ModuleState) or not isinstance(state, Sequence):
            raise TypeError(
                '`state` must be a sequence of optimizer states for a MetaOptimizer target, '
                f'got {type(state).__name__}'
            )
        groups = len(cast(Any, target).state_groups)
        if len(state) != groups:
            raise ValueError(
                f'`state` holds {len(state)} optimizer states, the MetaOptimizer has {groups} '
                'parameter groups'
            )
        cast(Any, target).load_state_dict(state)
        return

    raise TypeError(
        f'`target` must be an nn.Module or a MetaOptimizer, got {type(target).__name__}'
    )


# ----------------------------------------------------------------------------------------------
# module_clone
# ----------------------------------------------------------------------------------------------


def _shared_objects(target: Any) -> Iterator[Any]:
    """Yield the objects a ``module_clone`` deep copy shares with ``target`` (memo seeds).

    For a module: every tensor of its (sub)modules' parameter, buffer and meta-parameter dicts,
    and the meta-modules of :class:`torchopt.nn.MetaGradientModule` s with everything in them
    (meta-parameters are outer-level variables: a clone must keep pointing at them). For a
    meta-optimizer: every tensor it refers to (states and parameter containers). Non-leaf tensors
    cannot be deep-copied at all, so sharing them first is also what makes cloning possible.
    """
    if isinstance(target, nn.Module):
        for m in target.modules():
            for name in ('_parameters', '_buffers', '_meta_parameters'):
                yield from (t for t in getattr(m, name, {}).values() if t is not None)
            meta_modules = [mm for mm in getattr(m, '_meta_modules', {}).values() if mm is not None]
            meta_inputs = getattr(m, '_meta_inputs', None)
            if meta_inputs is not None:
                yield from meta_inputs.meta_parameters
                meta_modules.extend(meta_inputs.meta_modules)
            for mm in meta_modules:
                yield from mm.modules()
                yield from mm.parameters()
                yield from mm.buffers()
    else:
        leaves = optree.tree_leaves(vars(target), is_leaf=lambda x: isinstance(x, torch.Tensor))
        yield from (t for t in leaves if isinstance(t, torch.Tensor))


@overload
def module_clone(
    target: nn.Module,
    *,
    by: CopyMode = ...,
    detach_buffers: bool = ...,
    device: Device | None = ...,
) -> nn.Module: ...


@overload
def module_clone(
    target: MetaOptimizer,
    *,
    by: CopyMode = ...,
    detach_buffers: bool = ...,
    device: Device | None = ...,
) -> MetaOptimizer: ...


@overload
def module_clone(
    target: TensorTree,
    *,
    by: CopyMode = ...,
    detach_buffers: bool = ...,
    device: Device | None = ...,
) -> TensorTree: ...


def module_clone(
    target: nn.Module | MetaOptimizer | TensorTree,
    *,
    by: CopyMode = 'reference',
    detach_buffers: bool = False,
    device: Device | None = None,
) -> nn.Module | MetaOptimizer | TensorTree:
    """Clone a module, a meta-optimizer or a tree of tensors.

    A module or meta-optimizer is copied with :func:`copy.deepcopy` while sharing its tensors
    (and any meta-modules/meta-parameters, see below); then the clone is rebound with
    ``recover_state_dict(clone, extract_state_dict(target, by=by, ...))``. So with
    ``by='reference'`` the clone is a new object holding the *same* tensors (an in-place change
    shows in both), with ``'copy'`` its tensors are graph-connected clones, and with
    ``'deepcopy'`` it is fully independent. A :class:`torchopt.nn.MetaGradientModule` clone
    keeps referring to the original meta-parameters and meta-modules (the outer variables).
    A tree of tensors is tree-mapped with the replicate function (``'reference'`` without a
    device returns the same tensor objects in a new tree).

    Args:
        target: an :class:`torch.nn.Module`, a :class:`torchopt.MetaOptimizer` or a tree of
            tensors.
        by: the copy mode (see the module docstring).
        detach_buffers: deep-copy a module's buffers whatever ``by`` says.
        device: move the cloned tensors to this device.

    Returns:
        The clone, of the same kind as ``target``.

    Raises:
        ValueError: if ``by`` is not a copy mode (the error is also an ``AssertionError``, as
            upstream's), or ``device`` is not a valid device.
        TypeError: if ``target`` is a tree with a non-tensor leaf.

    """
    mode = _canonical_mode(by)
    dev = _canonical_device(device)

    if isinstance(target, nn.Module) or _is_meta_optimizer(target):
        memo: dict[int, Any] = {id(obj): obj for obj in _shared_objects(target)}
        cloned = copy.deepcopy(target, memo)
        state = extract_state_dict(
            cast(Any, target),
            by=cast(CopyMode, mode),
            device=dev,
            with_buffers=True,
            detach_buffers=detach_buffers,
        )
        recover_state_dict(cast(Any, cloned), state)
        return cloned

    replicate = _replicator(mode, dev)

    def replicate_leaf(x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                '`target` must be an nn.Module, a MetaOptimizer or a tree of tensors, found a '
                f'leaf of type {type(x).__name__}'
            )
        return replicate(x)

    return optree.tree_map(replicate_leaf, cast(Any, target))
