"""Computation-graph visualization for torchopt, served as ``torchopt.visual``.

:func:`make_dot` draws the autograd graph of a tensor with Graphviz and names the parameters it
finds, including the updated (non-leaf) parameters of every inner step of an unrolled
``MetaOptimizer``; :func:`resize_graph` sizes the drawing. Beyond upstream, :func:`save_graph`
renders one graph to several formats, and a missing Graphviz ``dot`` program raises
:class:`GraphvizNotFoundError`, which names the system package to install.

Example:
    >>> import torchopt
    >>> state0 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step0.')
    >>> optimizer.step(loss)
    >>> state1 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step1.')
    >>> dot = torchopt.visual.make_dot(outer_loss, [state0, state1, {'meta': meta_param}])
    >>> dot.render('graph', format='svg')
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
