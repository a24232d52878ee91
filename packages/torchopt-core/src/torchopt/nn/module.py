"""``MetaGradientModule``: a module that tells its meta-parameters from its parameters.

In bilevel optimization an inner module is built from outer variables: a tensor or a whole
module (the *meta-parameters* and *meta-modules*) that the outer loop optimizes, and that the
inner loop must not update. :class:`MetaGradientModule` remembers which objects were passed to
its constructor and files them apart from the module's own parameters and children::

    class InnerNet(torchopt.nn.MetaGradientModule):
        def __init__(self, meta_net: nn.Module, scale: torch.Tensor) -> None:
            super().__init__()
            self.meta_net = meta_net  # a meta-module (constructor input)
            self.scale = scale  # a meta-parameter (constructor input requiring grad)
            self.head = nn.Linear(4, 1)  # a child module, its tensors are parameters

    net.parameters()       # head.weight, head.bias only
    net.meta_parameters()  # scale, then meta_net's parameters
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import optree
import torch
from torch import nn

__all__ = ['MetaGradientModule', 'MetaInputsContainer']


class MetaInputsContainer(NamedTuple):
    """The objects found in the constructor arguments of a :class:`MetaGradientModule`.

    Attributes:
        meta_parameters: the tensors that require grad, and every parameter of the meta-modules.
        meta_modules: the modules in training mode, and every submodule of them.

    """

    meta_parameters: set[torch.Tensor]
    meta_modules: set[nn.Module]


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f'{kind} name should be a string. Got {torch.typename(name)}')
    if '.' in name:
        suffix = f", got: '{name}'" if kind.endswith('module') else ''
        raise KeyError(f"{kind} name can't contain '.'{suffix}")
    if name == '':
        raise KeyError(f"{kind} name can't be empty string ''")


_TENSOR_EXPECTED = 'a tensor that requires grad, or None,'
_MODULE_EXPECTED = 'torch.nn.Module or None'


def _clear_slot(
    store: dict[str, Any] | None, name: str, value: Any, kind: str, expected: str
) -> bool:
    """If ``name`` is a slot of ``store``, accept only ``None`` (clearing it); report a hit."""
    if store is None or name not in store:
        return False
    if value is not None:
        raise TypeError(
            f"cannot assign '{torch.typename(value)}' as {kind} '{name}' ({expected} expected)"
        )
    store[name] = None
    return True


class MetaGradientModule(nn.Module):
    """Base class for modules that hold meta-parameters and meta-modules.

    **Which objects are meta.** :meth:`__new__` flattens the constructor arguments (any pytree
    of them): every tensor with ``requires_grad=True`` is a meta-parameter candidate, and every
    :class:`torch.nn.Module` *in training mode* is a meta-module candidate; the parameters of a
    meta-module are meta-parameters and its submodules meta-modules. As in TorchOpt 0.7, a
    module passed in ``.eval()`` mode is not a meta-input: assigned as an attribute it becomes
    an ordinary child module, and its parameters become parameters of this module (upstream
    issue #144). The base class itself takes the arguments, so ``MetaGradientModule(x, net)``
    works as well as a subclass whose ``__init__`` calls ``super().__init__()``.

    **Attribute assignment** (``self.name = value``):

    * a tensor that requires grad becomes a meta-parameter if it is a constructor input,
      otherwise a *parameter* (any tensor is accepted, not only :class:`torch.nn.Parameter`,
      so a differentiable inner update can be written back with ``self.w = w - lr * g``);
    * a module becomes a meta-module if it is a constructor input, otherwise a child module;
    * ``None`` clears an existing parameter, meta-parameter, child or meta-module slot;
    * anything else (a tensor that does not require grad included) is a buffer if a buffer of
      that name exists, else a plain attribute.

    A name keeps one role; the rules follow :class:`torch.nn.Module`. A tensor that requires
    grad replaces whatever the name held (the name leaves its previous store). An existing
    parameter or meta-parameter slot takes only such a tensor or ``None``: anything else, a
    module included, raises :class:`TypeError`. A module replaces a child, meta-module, buffer
    or plain attribute; an existing child or meta-module slot given a value that is neither a
    module, a tensor that requires grad nor ``None`` raises :class:`TypeError`.

    Meta-parameters and meta-modules are not in :meth:`parameters`, :meth:`children`,
    :meth:`modules` nor :meth:`state_dict`; iterate over them with :meth:`meta_parameters`,
    :meth:`meta_children` and :meth:`meta_modules`.
    """

    _meta_inputs: MetaInputsContainer
    _meta_parameters: dict[str, torch.Tensor | None]
    _meta_modules: dict[str, nn.Module | None]

    def __new__(cls, *args: Any, **kwargs: Any) -> MetaGradientModule:
        """Create the instance and record its meta-inputs from the constructor arguments."""
        instance = super().__new__(cls)
        leaves = optree.tree_leaves((args, kwargs), none_is_leaf=True)
        meta_parameters = {x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad}
        meta_modules: set[nn.Module] = set()
        for module in (x for x in leaves if isinstance(x, nn.Module) and x.training):
            meta_modules.update(module.modules())
            meta_parameters.update(module.parameters())
        meta_inputs = MetaInputsContainer(meta_parameters, meta_modules)
        object.__setattr__(instance, '_meta_inputs', meta_inputs)
        object.__setattr__(instance, '_meta_parameters', OrderedDict())
        object.__setattr__(instance, '_meta_modules', OrderedDict())
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialize :class:`torch.nn.Module`; ``args``/``kwargs`` were read by :meth:`__new__`."""
        super().__init__()

    # ------------------------------------------------------------------------------------------
    # attribute protocol
    # ------------------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Look ``name`` up in parameters, buffers, children, meta-parameters and meta-modules."""
        d = self.__dict__
        for store in ('_parameters', '_buffers', '_modules', '_meta_parameters', '_meta_modules'):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def _forget(self, name: str, *, keep: str | None = None) -> None:
        """Remove ``name`` from every store except ``keep`` (and from the instance dict)."""
        d = self.__dict__
        d.pop(name, None)
        for store in ('_parameters', '_buffers', '_modules', '_meta_parameters', '_meta_modules'):
            if store != keep and store in d:
                d[store].pop(name, None)
        if keep != '_buffers' and '_non_persistent_buffers_set' in d:
            d['_non_persistent_buffers_set'].discard(name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Assign ``value`` following the rules in the class docstring."""
        d = self.__dict__
        params = d.get('_parameters')
        meta_params = d.get('_meta_parameters')
        modules = d.get('_modules')
        meta_modules = d.get('_meta_modules')

        if isinstance(value, torch.Tensor) and value.requires_grad:
            if params is None:
                raise AttributeError('cannot assign parameters before Module.__init__() call')
            if meta_params is None:
                raise AttributeError(
                    'cannot assign meta-parameters before MetaGradientModule.__init__() call'
                )
            if value in self._meta_inputs.meta_parameters:
                self._forget(name, keep='_meta_parameters')
                self.register_meta_parameter(name, value)
            else:
                self._forget(name, keep='_parameters')
                self.register_parameter(name, value)
        elif _clear_slot(params, name, value, 'parameter', _TENSOR_EXPECTED):
            pass
        elif _clear_slot(meta_params, name, value, 'meta-parameter', _TENSOR_EXPECTED):
            pass
        elif isinstance(value, nn.Module):
            if modules is None:
                raise AttributeError('cannot assign module before Module.__init__() call')
            if meta_modules is None:
                raise AttributeError(
                    'cannot assign module before MetaGradientModule.__init__() call'
                )
            if value in self._meta_inputs.meta_modules:
                self._forget(name, keep='_meta_modules')
                self.add_meta_module(name, value)
            else:
                self._forget(name, keep='_modules')
                self.add_module(name, value)
        elif _clear_slot(modules, name, value, 'child module', _MODULE_EXPECTED):
            pass
        elif _clear_slot(meta_modules, name, value, 'meta-module', _MODULE_EXPECTED):
            pass
        else:
            buffers = d.get('_buffers')
            if buffers is not None and name in buffers:
                if value is not None and not isinstance(value, torch.Tensor):
                    raise TypeError(
                        f"cannot assign '{torch.typename(value)}' as buffer '{name}' "
                        '(torch.Tensor or None expected)'
                    )
                buffers[name] = value
            else:
                object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        """Delete ``name`` from every store that holds it."""
        d = self.__dict__
        found = False
        for store in ('_parameters', '_buffers', '_modules', '_meta_parameters', '_meta_modules'):
            if store in d and name in d[store]:
                del d[store][name]
                found = True
        if '_non_persistent_buffers_set' in d:
            d['_non_persistent_buffers_set'].discard(name)
        if name in d or not found:
            object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        """Attribute names, meta-parameters and meta-modules included."""
        names = set(super().__dir__())
        names.update(self.__dict__.get('_meta_parameters', {}))
        names.update(self.__dict__.get('_meta_modules', {}))
        return sorted(names)

    # ------------------------------------------------------------------------------------------
    # registration
    # ------------------------------------------------------------------------------------------

    def register_parameter(self, name: str, param: torch.Tensor | None) -> None:
        """Add a parameter (any tensor that requires grad, or ``None``) named ``name``.

        Args:
            name: the attribute name.
            param: the tensor, which must not be a meta-input of this module.

        Raises:
            AttributeError: before ``Module.__init__()``.
            TypeError: if ``name`` is not a string or ``param`` not a tensor.
            KeyError: if ``name`` is empty, dotted or already another attribute.
            ValueError: if ``param`` does not require grad or is a meta-parameter.

        """
        if '_parameters' not in self.__dict__:
            raise AttributeError('cannot assign parameter before Module.__init__() call')
        _check_name('parameter', name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is None:
            self._parameters[name] = None
            return
        if not isinstance(param, torch.Tensor):
            raise TypeError(
                f"cannot assign '{torch.typename(param)}' object to parameter '{name}' "
                '(torch.Tensor or None required)'
            )
        if not param.requires_grad:
            raise ValueError(
                f"cannot assign Tensor that `requires_grad=False` to parameter '{name}'"
            )
        if param in self._meta_inputs.meta_parameters:
            raise ValueError(
                f"cannot assign Tensor that is a meta-parameter to parameter '{name}'. "
                'Use self.register_meta_parameter() instead.'
            )
        self._parameters[name] = param  # type: ignore[assignment]

    def register_meta_parameter(self, name: str, param: torch.Tensor | None) -> None:
        """Add a meta-parameter (a tensor that requires grad, or ``None``) named ``name``.

        Args:
            name: the attribute name.
            param: the tensor. It need not be a constructor input.

        Raises:
            AttributeError: before ``MetaGradientModule.__init__()``.
            TypeError: if ``name`` is not a string or ``param`` not a tensor.
            KeyError: if ``name`` is empty, dotted or already another attribute.
            ValueError: if ``param`` does not require grad.

        """
        if '_meta_parameters' not in self.__dict__ or '_parameters' not in self.__dict__:
            raise AttributeError(
                'cannot assign meta-parameter before MetaGradientModule.__init__() call'
            )
        _check_name('meta-parameter', name)
        if hasattr(self, name) and name not in self._meta_parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is None:
            self._meta_parameters[name] = None
            return
        if not isinstance(param, torch.Tensor):
            raise TypeError(
                f"cannot assign '{torch.typename(param)}' object to meta-parameter '{name}' "
                '(torch.Tensor or None required)'
            )
        if not param.requires_grad:
            raise ValueError(
                f"cannot assign Tensor that `requires_grad=False` to meta-parameter '{name}'"
            )
        self._meta_parameters[name] = param

    def add_module(self, name: str, module: nn.Module | None) -> None:
        """Add a child module named ``name`` (not a meta-input: use :meth:`add_meta_module`).

        Raises:
            AttributeError: before ``Module.__init__()``.
            TypeError: if ``module`` is not a module or ``name`` not a string.
            KeyError: if ``name`` is empty, dotted or already another attribute.
            ValueError: if ``module`` is a meta-module of this module.

        """
        if '_modules' not in self.__dict__:
            raise AttributeError('cannot assign module before Module.__init__() call')
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(f'{torch.typename(module)} is not a Module subclass')
        _check_name('module', name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        if module is not None and module in self._meta_inputs.meta_modules:
            raise ValueError(
                f"cannot add module that is a meta-module to module '{name}'. "
                'Use self.add_meta_module() instead.'
            )
        self._modules[name] = module

    def register_module(self, name: str, module: nn.Module | None) -> None:
        """Alias of :meth:`add_module`."""
        self.add_module(name, module)

    def add_meta_module(self, name: str, meta_module: nn.Module | None) -> None:
        """Add a meta-module named ``name``.

        Raises:
            AttributeError: before ``MetaGradientModule.__init__()``.
            TypeError: if ``meta_module`` is not a module or ``name`` not a string.
            KeyError: if ``name`` is empty, dotted or already another attribute.

        """
        if '_meta_modules' not in self.__dict__ or '_modules' not in self.__dict__:
            raise AttributeError(
                'cannot assign meta-module before MetaGradientModule.__init__() call'
            )
        if meta_module is not None and not isinstance(meta_module, nn.Module):
            raise TypeError(f'{torch.typename(meta_module)} is not a Module subclass')
        _check_name('meta-module', name)
        if hasattr(self, name) and name not in self._meta_modules:
            raise KeyError(f"attribute '{name}' already exists")
        self._meta_modules[name] = meta_module

    def register_meta_module(self, name: str, meta_module: nn.Module | None) -> None:
        """Alias of :meth:`add_meta_module`."""
        self.add_meta_module(name, meta_module)

    # ------------------------------------------------------------------------------------------
    # iteration
    # ------------------------------------------------------------------------------------------

    def meta_parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """Iterate over the meta-parameters (see :meth:`named_meta_parameters`)."""
        for _, param in self.named_meta_parameters(recurse=recurse):
            yield param

    def named_meta_parameters(
        self, prefix: str = '', recurse: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Iterate over ``(name, meta_parameter)`` pairs, each tensor once.

        First the meta-parameters registered on this module, then (with ``recurse``) the
        parameters of its meta-modules, named ``'<meta-module>.<parameter path>'``. Names are
        joined to ``prefix`` with a dot, as :meth:`torch.nn.Module.named_parameters` does.

        Args:
            prefix: prepended (with a ``'.'``) to every name.
            recurse: include the parameters of the meta-modules; otherwise only the
                meta-parameters that are direct members of this module.

        """
        memo: set[torch.Tensor] = set()
        dot_prefix = prefix + '.' if prefix else ''
        for name, param in self._meta_parameters.items():
            if param is None or param in memo:
                continue
            memo.add(param)
            yield dot_prefix + name, param
        if not recurse:
            return
        for name, meta_module in self._meta_modules.items():
            if meta_module is None:
                continue
            for sub_name, param in meta_module.named_parameters(dot_prefix + name):
                if param in memo:
                    continue
                memo.add(param)
                yield sub_name, param

    def meta_children(self) -> Iterator[nn.Module]:
        """Iterate over the immediate meta-modules."""
        for _, module in self.named_meta_children():
            yield module

    def named_meta_children(self) -> Iterator[tuple[str, nn.Module]]:
        """Iterate over ``(name, meta_module)`` for the immediate meta-modules, each once."""
        memo: set[nn.Module] = set()
        for name, module in self._meta_modules.items():
            if module is not None and module not in memo:
                memo.add(module)
                yield name, module

    def meta_modules(self) -> Iterator[nn.Module]:
        """Iterate over the meta-modules and all their submodules, each once."""
        for _, module in self.named_meta_modules():
            yield module

    def named_meta_modules(
        self, memo: set[nn.Module] | None = None, prefix: str = '', remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        """Iterate over ``(name, module)`` for the meta-modules and all their submodules.

        Args:
            memo: modules already yielded (shared with :meth:`torch.nn.Module.named_modules`).
            prefix: prepended (with a ``'.'``) to every name.
            remove_duplicate: yield a module reachable along several paths only once.

        """
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        dot_prefix = prefix + '.' if prefix else ''
        for name, module in self._meta_modules.items():
            if module is None:
                continue
            yield from module.named_modules(memo, dot_prefix + name, remove_duplicate)
