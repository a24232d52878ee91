"""Parameter names for graph nodes: the ``params`` argument of :func:`~torchopt_viz.make_dot`.

``params`` may be a mapping ``name -> tensor``, a ``ModuleState`` carrying ``visual_contents``
(from ``torchopt.extract_state_dict(..., enable_visual=True, visual_prefix='step0.')``), a
generator of ``(name, tensor)`` pairs (``module.named_parameters()``), or an iterable mixing
those. :class:`ParamLabels` turns any of them into two lookups:

* tensors (drawn as the variable of an ``AccumulateGrad`` node, as an output or as a saved
  tensor) ``-> names``;
* autograd nodes (``grad_fn``) ``-> (name, tensor)`` pairs, from ``visual_contents`` only, which
  is how updated, *non-leaf* parameters of an unrolled ``MetaOptimizer`` get their names (as
  upstream: a mapping or a generator that names a non-leaf tensor does not name its node).
  One node may carry several names: a multi-tensor (``foreach`` or fused) update produces
  every new parameter from one node.
  Core's ``visual_contents`` joins the names of such a node into one entry
  (``'step1.fc.weight, step1.fc.bias'``), which is split back into names here.

Lookups are by object identity, and the objects are held for the lifetime of the labels, so an
``id`` can never be reused by another object while a graph is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.autograd.graph import Node

__all__ = ['ParamLabels', 'is_autograd_node', 'is_module_state']


def is_module_state(obj: Any) -> bool:
    """Whether ``obj`` is a ``torchopt.utils.ModuleState`` (or a NamedTuple shaped like one)."""
    return (
        isinstance(obj, tuple)
        and hasattr(obj, '_fields')
        and 'visual_contents' in getattr(obj, '_fields', ())
    )


def is_autograd_node(obj: Any) -> bool:
    """Whether ``obj`` is an autograd graph node (a tensor's ``grad_fn``).

    ``torch.autograd.graph.Node`` does not recognise every node class (the generic
    ``CppFunction`` of foreach and custom ops is missed), so nodes are also recognised by their
    ``next_functions``.
    """
    return isinstance(obj, Node) or (
        not isinstance(obj, torch.Tensor)
        and hasattr(obj, 'next_functions')
        and hasattr(obj, 'name')
    )


class ParamLabels:
    """Names of tensors and autograd nodes, keyed by object identity.

    Args:
        params: ``None`` or any of the forms accepted by :func:`~torchopt_viz.make_dot`.

    Raises:
        TypeError: ``params`` (or an item of it) has a form not listed above, a name is not a
            string, or a value is not a tensor.
        ValueError: a ``ModuleState`` has no ``visual_contents`` (it was not extracted with
            ``enable_visual=True``).
    """

    def __init__(self, params: Any = None) -> None:
        # id -> (object kept alive, [names]) / (node kept alive, [(name, tensor)])
        self._tensors: dict[int, tuple[torch.Tensor, list[str]]] = {}
        self._nodes: dict[int, tuple[Node, list[list[Any]]]] = {}  # [[name, tensor | None]]
        if params is not None:
            self._add(params, 'params')

    # ------------------------------------------------------------------ lookups

    def tensor_names(self, tensor: torch.Tensor) -> list[str]:
        """The names given to ``tensor`` itself (empty when none)."""
        entry = self._tensors.get(id(tensor))
        return list(entry[1]) if entry is not None and entry[0] is tensor else []

    def node_names(self, node: Any) -> list[tuple[str, torch.Tensor | None]]:
        """The ``(name, tensor)`` pairs of the tensors produced by autograd node ``node``.

        The tensor is ``None`` for names known only from a joined ``visual_contents`` entry.
        """
        entry = self._nodes.get(id(node))
        if entry is None or entry[0] is not node:
            return []
        return [(name, tensor) for name, tensor in entry[1]]

    def __len__(self) -> int:
        return sum(len(v[1]) for v in self._tensors.values()) + sum(
            len(v[1]) for v in self._nodes.values()
        )

    # ------------------------------------------------------------------ building

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Name ``tensor`` where it is drawn (a leaf variable, an output, a saved tensor).

        As upstream, a name given for a non-leaf tensor does not name the node that produced
        it: only ``visual_contents`` entries name ``grad_fn`` nodes.
        """
        names = self._tensors.setdefault(id(tensor), (tensor, []))[1]
        if name not in names:
            names.append(name)

    def add_node(self, node: Node, name: str, tensor: torch.Tensor | None) -> None:
        """Name the output ``tensor`` of autograd node ``node`` (``None``: shape unknown)."""
        pairs = self._nodes.setdefault(id(node), (node, []))[1]
        for pair in pairs:
            if pair[0] == name and (pair[1] is tensor or tensor is None or pair[1] is None):
                if pair[1] is None:
                    pair[1] = tensor
                return
        pairs.append([name, tensor])

    def _add(self, params: Any, where: str) -> None:
        if is_module_state(params):
            self._add_module_state(params, where)
        elif isinstance(params, Mapping):
            self._add_mapping(params, where)
        elif isinstance(params, (torch.Tensor, str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(
                f'`{where}` must be a mapping of names to tensors, a ModuleState from '
                'extract_state_dict(..., enable_visual=True), a generator of (name, tensor) pairs '
                f'such as named_parameters(), or an iterable of these; got {type(params).__name__}'
            )
        else:
            is_pairs_generator = isinstance(params, Iterator)
            for i, item in enumerate(params):
                here = f'{where}[{i}]'
                if _is_named_pair(item):
                    self._add_named(item[0], item[1], here)
                elif is_pairs_generator and isinstance(item, tuple) and not is_module_state(item):
                    raise TypeError(
                        f'`{here}` must be a (name: str, tensor) pair, got '
                        f'({", ".join(type(x).__name__ for x in item)})'
                    )
                else:
                    self._add(item, here)

    def _add_module_state(self, state: Any, where: str) -> None:
        contents = state.visual_contents
        if contents is None:
            raise ValueError(
                f'`{where}` is a ModuleState without visual_contents: extract it with '
                "torchopt.extract_state_dict(module, enable_visual=True, visual_prefix='step0.')"
            )
        self._add_mapping(contents, f'{where}.visual_contents')

    def _add_mapping(self, mapping: Mapping[Any, Any], where: str) -> None:
        for key, value in mapping.items():
            if isinstance(key, str):  # name -> tensor
                self._add_named(key, value, f'{where}[{key!r}]')
            elif isinstance(key, torch.Tensor):  # visual_contents: leaf tensor -> name
                if not isinstance(value, str):
                    raise TypeError(
                        f'`{where}` maps a tensor to {type(value).__name__}; '
                        'expected its name (str)'
                    )
                self.add_tensor(value, key)
            elif is_autograd_node(key):  # visual_contents: grad_fn -> (name, tensor)
                if not (
                    isinstance(value, tuple)
                    and len(value) == 2
                    and isinstance(value[0], str)
                    and isinstance(value[1], torch.Tensor)
                ):
                    raise TypeError(
                        f'`{where}` maps a grad_fn to {type(value).__name__}; expected a '
                        '(name: str, tensor) pair'
                    )
                names = value[0].split(', ')
                if len(names) == 1:
                    self.add_node(key, value[0], value[1])
                else:  # several parameters made by one node, joined into one entry by core
                    for name in names:
                        self.add_node(key, name, None)
            else:
                raise TypeError(
                    f'`{where}` has a key of type {type(key).__name__}; expected a name (str), or '
                    'a tensor / grad_fn as in ModuleState.visual_contents'
                )

    def _add_named(self, name: Any, tensor: Any, where: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f'`{where}`: a parameter name must be a str, got {type(name).__name__}')
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f'`{where}`: the value named {name!r} must be a tensor, got {type(tensor).__name__}'
            )
        self.add_tensor(name, tensor)


def _is_named_pair(item: Any) -> bool:
    return (
        isinstance(item, tuple)
        and not is_module_state(item)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )
