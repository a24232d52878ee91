"""Drawing autograd graphs with parameter names (upstream ``torchopt.visual``).

:func:`make_dot` walks the autograd graph backwards from the output tensors and emits one
Graphviz node per autograd node (``grad_fn``), per leaf variable and per output, filled with:

* ``darkolivegreen1``: the outputs (``var``); ``darkolivegreen3``: bases of outputs that are views;
* ``lightblue``: leaf tensors (the ``.variable`` of ``AccumulateGrad``) and the ``grad_fn`` of
  updated (non-leaf) parameters named by a ``ModuleState``'s ``visual_contents``;
* ``orange``: saved tensors (those of custom ``autograd.Function`` s always, others with
  ``show_saved=True``).

A tensor met in several roles is drawn once, in the colour listed first above.

The walk is iterative, so graphs of long unrolls do not hit Python's recursion limit, and a
fused multi-tensor op (e.g. the accelerated Adam step of ``torchopt-accel``) is one autograd node
and so one graph node, labelled with the names of every parameter it produces.
"""

from __future__ import annotations

from typing import Any

import graphviz
import torch

from torchopt import pytree
from torchopt_viz.labels import ParamLabels
from torchopt_viz.rendering import Digraph

__all__ = ['make_dot', 'resize_graph']

_SAVED_PREFIX = '_saved_'
_OUTPUT_COLOR = 'darkolivegreen1'
_VIEW_BASE_COLOR = 'darkolivegreen3'
_PARAM_COLOR = 'lightblue'
_SAVED_COLOR = 'orange'
_COLOR_RANK = {_OUTPUT_COLOR: 0, _VIEW_BASE_COLOR: 1, _PARAM_COLOR: 2, _SAVED_COLOR: 3}
_NODE_ATTR = {
    'style': 'filled',
    'shape': 'box',
    'align': 'left',
    'fontsize': '10',
    'ranksep': '0.1',
    'height': '0.2',
    'fontname': 'monospace',
}


def make_dot(
    var: Any,
    params: Any = None,
    show_attrs: bool = False,
    show_saved: bool = False,
    max_attr_chars: int = 50,
) -> graphviz.Digraph:
    """Draw the autograd graph that produced ``var``, naming the parameters found in ``params``.

    Args:
        var: a tensor, or a pytree (tuple, list, dict, ...) of tensors: the outputs.
        params: names for tensors of the graph, any of

            * a mapping ``{name: tensor}``;
            * a ``ModuleState`` from ``torchopt.extract_state_dict(module, enable_visual=True,
              visual_prefix='step0.')``, whose ``visual_contents`` name leaf parameters and the
              ``grad_fn`` of updated (non-leaf) parameters;
            * a generator of ``(name, tensor)`` pairs, e.g. ``module.named_parameters()``;
            * an iterable mixing those, e.g. ``[state0, state1, {'meta': meta_param}]``.

            As upstream, a mapping or a generator names tensors where they are drawn (leaf
            variables, outputs, saved tensors); only ``visual_contents`` names ``grad_fn`` nodes.
        show_attrs: print the non-tensor attributes saved by each autograd node.
        show_saved: draw the tensors saved by each autograd node for backward (``_saved_*``).
            The saved tensors of custom ``autograd.Function`` s are always drawn.
        max_attr_chars: truncate printed attributes to this many characters (at least 3).

    Returns:
        A ``graphviz.Digraph`` (the :class:`~torchopt_viz.rendering.Digraph` subclass, whose
        rendering reports a missing ``dot`` program by the package to install), sized by
        :func:`resize_graph`.

    Raises:
        TypeError: ``var`` holds something other than tensors, ``params`` has an unsupported
            form, or ``max_attr_chars`` is not an int.
        ValueError: ``var`` holds no tensor.

    Example:
        >>> net, meta, x = torch.nn.Linear(3, 1), torch.tensor(1.0, requires_grad=True), torch.ones(4, 3)
        >>> optimizer = torchopt.MetaSGD(net, lr=0.1)
        >>> extract = torchopt.extract_state_dict
        >>> state0 = extract(net, enable_visual=True, visual_prefix='step0.')
        >>> optimizer.step(meta * net(x).pow(2).mean())
        >>> state1 = extract(net, enable_visual=True, visual_prefix='step1.')
        >>> dot = make_dot(net(x).sum(), [state0, state1, {'meta': meta}])
        >>> 'step1.weight' in dot.source
        True
    """
    outputs = _output_tensors(var)
    if isinstance(max_attr_chars, bool) or not isinstance(max_attr_chars, int):
        raise TypeError(f'`max_attr_chars` must be an int, got {type(max_attr_chars).__name__}')
    labels = ParamLabels(params)
    builder = _GraphBuilder(labels, bool(show_attrs), bool(show_saved), max(3, max_attr_chars))
    for tensor in outputs:
        builder.add_output(tensor)
    return builder.finish()


def resize_graph(
    dot: graphviz.Digraph, size_per_element: float = 0.5, min_size: float = 12.0
) -> None:
    r"""Size ``dot`` by its number of statements, in place.

    The ``size`` graph attribute becomes ``s,s`` (inches) with
    :math:`s = \max(\text{min\_size}, \text{rows} \cdot \text{size\_per\_element})`, where rows is
    the number of statements (nodes and edges) in ``dot.body``.

    Args:
        dot: a ``graphviz`` graph.
        size_per_element: inches per statement, non-negative.
        min_size: the smallest size in inches, positive.

    Raises:
        TypeError: ``dot`` is not a ``graphviz`` graph or a size is not a real number.
        ValueError: a size is negative (or ``min_size`` is zero).
    """
    if not isinstance(dot, (graphviz.Digraph, graphviz.Graph)):
        raise TypeError(f'`dot` must be a graphviz.Digraph, got {type(dot).__name__}')
    for name, value in (('size_per_element', size_per_element), ('min_size', min_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f'`{name}` must be a real number, got {type(value).__name__}')
    if size_per_element < 0:
        raise ValueError(f'`size_per_element` must be non-negative, got {size_per_element}')
    if min_size <= 0:
        raise ValueError(f'`min_size` must be positive, got {min_size}')
    size = max(min_size, len(dot.body) * size_per_element)
    dot.graph_attr.update(size=f'{size},{size}')


def _output_tensors(var: Any) -> list[torch.Tensor]:
    if isinstance(var, torch.Tensor):
        return [var]
    leaves = pytree.tree_leaves(var)
    bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
    if bad:
        raise TypeError(
            f'`var` must be a tensor or a pytree of tensors, found leaves of type {bad}'
        )
    if not leaves:
        raise ValueError('`var` must hold at least one tensor')
    return leaves


def _size_str(tensor: torch.Tensor) -> str:
    return '(' + ', '.join(str(s) for s in tensor.shape) + ')'


def _node_name(fn: Any) -> str:
    """``MulBackward0``, ``AccumulateGrad``, ``ForeachAddBackward0List``, ``MyFunctionBackward``.

    The class name, as upstream, except for nodes whose Python class is the generic
    ``CppFunction`` (foreach ops, custom ops), which are named by ``Node.name()``.
    """
    name = type(fn).__name__
    if name == 'CppFunction' and callable(getattr(fn, 'name', None)):
        name = str(fn.name()).removeprefix('torch::autograd::')
    return name


def _saved_attrs(fn: Any) -> dict[str, Any]:
    """``_saved_*`` attributes of an autograd node (``'[freed]'`` once backward released them)."""
    attrs: dict[str, Any] = {}
    for attr in dir(fn):
        if not attr.startswith(_SAVED_PREFIX):
            continue
        try:
            attrs[attr[len(_SAVED_PREFIX) :]] = getattr(fn, attr)
        except RuntimeError:  # saved variables freed by a backward pass
            attrs[attr[len(_SAVED_PREFIX) :]] = '[freed]'
    return attrs


class _GraphBuilder:
    """Accumulates the DOT statements of one graph; every object is drawn once."""

    def __init__(self, labels: ParamLabels, show_attrs: bool, show_saved: bool, max_chars: int):
        self.labels = labels
        self.show_attrs = show_attrs
        self.show_saved = show_saved
        self.max_chars = max_chars
        self.dot = Digraph(node_attr=dict(_NODE_ATTR), graph_attr={'size': '12,12'})
        self._alive: dict[int, Any] = {}  # id -> object: no id is reused while drawing
        self._drawn: set[int] = set()
        self._tensors: dict[int, list[Any]] = {}  # id -> [tensor, colour, saved-attribute name]

    def _key(self, obj: Any) -> str:
        self._alive.setdefault(id(obj), obj)
        return str(id(obj))

    def _mark(self, obj: Any) -> bool:
        """Mark a node walked or an output expanded; ``False`` when it already was."""
        key = id(self._alive.setdefault(id(obj), obj))
        if key in self._drawn:
            return False
        self._drawn.add(key)
        return True

    def _add_tensor_node(self, tensor: torch.Tensor, color: str, name: str | None = None) -> bool:
        """Record ``tensor`` for drawing; ``False`` when it was already recorded.

        A tensor met in several roles (say a leaf parameter that a node also saves) is drawn
        once, in the colour of its most significant role, under its parameter names if it has
        any, else under ``name`` (the attribute that saved it).
        """
        entry = self._tensors.get(id(tensor))
        if entry is not None:
            if _COLOR_RANK[color] < _COLOR_RANK[entry[1]]:
                entry[1] = color
            if entry[2] is None:
                entry[2] = name
            return False
        self._key(tensor)
        self._tensors[id(tensor)] = [tensor, color, name]
        return True

    def finish(self) -> Digraph:
        """Emit the tensor nodes and size the graph."""
        for tensor, color, name in self._tensors.values():
            names = self.labels.tensor_names(tensor)
            label = ', '.join(names) if names else (name or '')
            self.dot.node(self._key(tensor), f'{label}\n{_size_str(tensor)}', fillcolor=color)
        self._tensors.clear()
        resize_graph(self.dot)
        return self.dot

    def add_output(self, tensor: torch.Tensor, color: str = _OUTPUT_COLOR) -> None:
        self._add_tensor_node(tensor, color)
        if not self._mark(tensor):
            return
        if tensor.grad_fn is not None:
            self._walk(tensor.grad_fn)
            self.dot.edge(self._key(tensor.grad_fn), self._key(tensor))
        if tensor._is_view() and tensor._base is not None:
            self.add_output(tensor._base, _VIEW_BASE_COLOR)
            self.dot.edge(self._key(tensor._base), self._key(tensor), style='dotted')

    def _walk(self, root: Any) -> None:
        stack = [root]
        while stack:
            fn = stack.pop()
            if not self._mark(fn):
                continue
            self._draw_function(fn)
            children = [u for u, _ in getattr(fn, 'next_functions', ()) if u is not None]
            for child in children:
                self.dot.edge(self._key(child), self._key(fn))
            stack.extend(reversed(children))

    def _draw_function(self, fn: Any) -> None:
        if self.show_saved:
            for attr, value in _saved_attrs(fn).items():
                if isinstance(value, torch.Tensor):
                    self._add_saved(fn, value, attr)
                elif isinstance(value, tuple):
                    for i, t in enumerate(value):
                        if isinstance(t, torch.Tensor):
                            self._add_saved(fn, t, f'{attr}[{i}]')
        variable = getattr(fn, 'variable', None)
        if isinstance(variable, torch.Tensor):  # AccumulateGrad: the leaf it accumulates into
            self._add_tensor_node(variable, _PARAM_COLOR)
            self.dot.edge(self._key(variable), self._key(fn))
        label = self._function_label(fn)
        names = self.labels.node_names(fn)
        if names:
            for name, tensor in names:
                label += f'\n{name}' if tensor is None else f'\n{name}\n{_size_str(tensor)}'
            self.dot.node(self._key(fn), label, fillcolor=_PARAM_COLOR)
        else:
            self.dot.node(self._key(fn), label)
        if hasattr(fn, 'saved_tensors'):  # custom autograd.Function
            try:
                saved = fn.saved_tensors
            except RuntimeError:  # freed by a backward pass
                saved = ()
            for t in saved:
                if isinstance(t, torch.Tensor):
                    self._add_tensor_node(t, _SAVED_COLOR)
                    self.dot.edge(self._key(t), self._key(fn), dir='none')

    def _add_saved(self, fn: Any, tensor: torch.Tensor, attr: str) -> None:
        self._add_tensor_node(tensor, _SAVED_COLOR, name=attr)
        self.dot.edge(self._key(fn), self._key(tensor), dir='none')

    def _function_label(self, fn: Any) -> str:
        name = _node_name(fn)
        if not self.show_attrs:
            return name
        attrs = {}
        for attr, value in _saved_attrs(fn).items():
            if isinstance(value, torch.Tensor):
                attrs[attr] = '[saved tensor]'
            elif isinstance(value, tuple) and any(isinstance(t, torch.Tensor) for t in value):
                attrs[attr] = '[saved tensors]'
            else:
                attrs[attr] = str(value)
        if not attrs:
            return name
        width_key = max(len(k) for k in attrs)
        width_value = min(max(len(v) for v in attrs.values()), self.max_chars)

        def truncate(text: str) -> str:
            return text if len(text) <= width_value else text[: width_value - 3] + '...'

        rows = [f'{k:<{width_key}}: {truncate(v):>{width_value}}' for k, v in attrs.items()]
        rule = '-' * max(width_key + width_value + 2, len(name))
        return '\n'.join([name, rule, *rows])
