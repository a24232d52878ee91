"""pytest plugin for the docstring examples: ``torch`` and ``torchopt`` are pre-imported.

Run the examples of all six packages as doctests (``hatch run docs:doctest``)::

    PYTHONPATH=docs/_ext python -m pytest -p doctest_namespace --doctest-modules \
        packages/torchopt-core/src packages/torchopt-implicit/src packages/torchopt-zero/src \
        packages/torchopt-distributed/src packages/torchopt-viz/src packages/torchopt-accel/src

Examples may use ``torch`` and ``torchopt`` without importing them (as NumPy's use ``np``);
everything else they use, they define. Each example runs single-threaded with a fixed seed so
that printed numbers are reproducible.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt

__all__ = ['doctest_globals']


@pytest.fixture(autouse=True)
def doctest_globals(doctest_namespace: dict[str, Any]) -> None:
    """Pre-import ``torch`` and ``torchopt`` and seed the generator for every example."""
    doctest_namespace['torch'] = torch
    doctest_namespace['torchopt'] = torchopt
    torch.manual_seed(0)
    torch.set_num_threads(1)
