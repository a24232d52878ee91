"""Helpers shared by the examples: command-line flags, output folder, progress bars, plots.

Every example accepts ``--quick`` (a short run for CI, under a minute on two CPU cores),
``--out`` (where the PNG plot goes, default ``<example>/outputs/``) and ``--seed``, and its
``main(argv)`` returns a dict of headline numbers that ``tests/test_examples.py`` checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ['add_common_args', 'output_dir', 'progress', 'pyplot', 'set_threads']

T = TypeVar('T')


def add_common_args(parser: argparse.ArgumentParser, example_file: str) -> None:
    """Add ``--quick``, ``--out`` and ``--seed`` to ``parser``.

    Args:
        parser: the example's argument parser.
        example_file: the example's ``__file__``; the default output folder is ``outputs/``
            beside it (git-ignored).
    """
    parser.add_argument('--quick', action='store_true', help='short run (CI smoke test, < 1 min)')
    parser.add_argument(
        '--out',
        type=Path,
        default=Path(example_file).resolve().parent / 'outputs',
        help='folder for the plot (default: outputs/ beside the example)',
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed')


def output_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return iter(
        tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)
    )


def pyplot():
    """Return ``matplotlib.pyplot`` set to the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def set_threads(n: int = 2) -> None:
    """Use at most ``n`` intra-op threads (the examples are small; CI machines have 2 cores)."""
    import torch

    torch.set_num_threads(max(1, min(n, torch.get_num_threads())))
