"""``torchopt.visual`` is served by this package, with upstream's signatures."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import graphviz
import torch

import torchopt
import torchopt_viz


def test_upstream_paths_resolve_to_this_package():
    import torchopt.visual

    assert torchopt.visual is torchopt_viz
    assert importlib.import_module('torchopt.visual') is torchopt_viz
    assert torchopt.visual.make_dot is torchopt_viz.make_dot
    assert torchopt.visual.resize_graph is torchopt_viz.resize_graph
    from torchopt.visual import make_dot, resize_graph

    assert (make_dot, resize_graph) == (torchopt_viz.make_dot, torchopt_viz.resize_graph)


def test_signatures_match_the_reference():
    def shape(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    positional, empty = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty
    assert shape(torchopt_viz.make_dot) == [
        ('var', positional, empty),
        ('params', positional, None),
        ('show_attrs', positional, False),
        ('show_saved', positional, False),
        ('max_attr_chars', positional, 50),
    ]
    assert shape(torchopt_viz.resize_graph) == [
        ('dot', positional, empty),
        ('size_per_element', positional, 0.5),
        ('min_size', positional, 12.0),
    ]


def test_all_names_exist():
    for name in ('torchopt_viz', *(f'torchopt_viz.{m}' for m in ('graph', 'labels', 'rendering'))):
        module = importlib.import_module(name)
        assert module.__all__, name
        for attr in module.__all__:
            assert getattr(module, attr).__doc__, f'{name}.{attr} has no docstring'
    assert {'make_dot', 'resize_graph'} <= set(torchopt_viz.__all__)


def test_make_dot_returns_a_graphviz_digraph():
    dot = torchopt.visual.make_dot(torch.ones(1, requires_grad=True) * 3)
    assert isinstance(dot, graphviz.Digraph)
    assert isinstance(dot, torchopt_viz.Digraph)


def test_import_torchopt_does_not_import_graphviz():
    code = 'import sys, torchopt; print("graphviz" in sys.modules, "torchopt_viz" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['False', 'False']
