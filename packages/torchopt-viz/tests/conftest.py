"""Shared fixtures and helpers of the torchopt-viz tests."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from typing import Any, NamedTuple

import pytest
import torch

torch.set_num_threads(1)

_NODE = re.compile(r'^\t(\S+) \[label=("(?:[^"\\]|\\.)*"|[^\s\]]+)(?: fillcolor=([^\s\]]+))?')
_EDGE = re.compile(r'^\t(\S+) -> (\S+)')


class DotNode(NamedTuple):
    """One node statement of a DOT body."""

    key: str
    label: str
    color: str | None


def parse_dot(dot: Any) -> tuple[dict[str, DotNode], Counter[tuple[str, str]]]:
    """Nodes (by key) and the multiset of edges of a graphviz graph's body."""
    nodes: dict[str, DotNode] = {}
    edges: Counter[tuple[str, str]] = Counter()
    for stmt in dot.body:
        edge = _EDGE.match(stmt)
        if edge:
            edges[edge.group(1), edge.group(2)] += 1
            continue
        node = _NODE.match(stmt)
        assert node, f'unexpected DOT statement {stmt!r}'
        label = node.group(2)
        if label.startswith('"'):
            label = label[1:-1]
        assert node.group(1) not in nodes, f'node {node.group(1)} emitted twice'
        nodes[node.group(1)] = DotNode(node.group(1), label, node.group(3))
    return nodes, edges


def autograd_nodes(*tensors: torch.Tensor) -> list[Any]:
    """Every autograd node reachable from ``tensors`` (a reference walk, holding the nodes)."""
    found: list[Any] = []
    ids: set[int] = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if id(fn) in ids:
            continue
        ids.add(id(fn))
        found.append(fn)
        stack.extend(u for u, _ in fn.next_functions if u is not None)
    return found


@pytest.fixture(scope='session')
def dot_program() -> str:
    """The path of Graphviz ``dot`` (CI installs the ``graphviz`` system package)."""
    path = shutil.which('dot')
    if path is None:
        pytest.fail('the Graphviz `dot` program is required: apt-get install graphviz')
    return path


@pytest.fixture(scope='session')
def parse() -> Any:
    """:func:`parse_dot` as a fixture (tests run with ``--import-mode=importlib``)."""
    return parse_dot


@pytest.fixture(scope='session')
def reachable() -> Any:
    """:func:`autograd_nodes` as a fixture."""
    return autograd_nodes
