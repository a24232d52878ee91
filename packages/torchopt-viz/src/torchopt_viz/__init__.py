"""Computation-graph visualization for torchopt, served as ``torchopt.visual``.

:func:`make_dot` draws the autograd graph of a tensor with Graphviz and names the parameters it
finds, including the updated (non-leaf) parameters of every inner step of an unrolled
``MetaOptimizer``; :func:`resize_graph` sizes the drawing. Beyond upstream, :func:`save_graph`
renders one graph to several formats, and a missing Graphviz ``dot`` program raises
:class:`GraphvizNotFoundError`, which names the system package to install.

Example:
    >>> import torch
    >>> import torchopt
    >>> net, meta, x = torch.nn.Linear(3, 1), torch.tensor(1.0, requires_grad=True), torch.ones(4, 3)
    >>> optimizer = torchopt.MetaSGD(net, lr=0.1)
    >>> state0 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step0.')
    >>> optimizer.step(meta * net(x).pow(2).mean())
    >>> state1 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step1.')
    >>> dot = torchopt.visual.make_dot(net(x).sum(), [state0, state1, {'meta': meta}])
    >>> all(name in dot.source for name in ('step0.weight', 'step1.weight', 'meta'))
    True
    >>> svg = dot.pipe(format='svg')  # or dot.render('graph', format='svg') to write a file
"""

from torchopt_viz.graph import make_dot, resize_graph
from torchopt_viz.rendering import Digraph, GraphvizNotFoundError, dot_executable, save_graph

__all__ = [
    'make_dot',
    'resize_graph',
    'save_graph',
    'dot_executable',
    'Digraph',
    'GraphvizNotFoundError',
]
